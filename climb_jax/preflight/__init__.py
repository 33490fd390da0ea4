"""The TPU pre-flight, on a machine without a TPU: the accelerators' specs (`accelerators`, pure Python),
the ahead-of-time compile of a run's real step for a topology (`aot`), its report (`report`), the
table of launch/README.md (`table`) and the command line (`cli`, run as `python -m climb_jax.aot`)."""
