"""Launchers: Cloud TPU VMs (`tpu_vm`), one multi-GPU host (`gpu`) and curriculum sweeps (`sweep`).

Standard library only, so the scripts run on a laptop that has `gcloud` but not the training stack.
"""
