"""Comparing runs: reading workdirs, statistics of differences, the report and its plots."""
