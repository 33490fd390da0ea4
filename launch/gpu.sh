#!/usr/bin/env bash
# One multi-GPU host; see launch/README.md. Example:
#   launch/gpu.sh --install --config=configs/vanilla.py:small,bf16 --workdir=runs/vanilla_small --dry-run
exec "${PYTHON:-python3}" "$(dirname "$0")/gpu.py" "$@"
