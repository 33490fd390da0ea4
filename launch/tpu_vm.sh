#!/usr/bin/env bash
# Cloud TPU VM launcher; see launch/README.md. Example:
#   launch/tpu_vm.sh create climb-v4-32 --zone=us-central2-b --accelerator-type=v4-32 --dry-run
exec "${PYTHON:-python3}" "$(dirname "$0")/tpu_vm.py" "$@"
