"""The vanilla CLIMB baseline: RoBERTa pre-layer-norm `small`, masked LM only, no curriculum.

  python -m climb_jax.main --config=configs/vanilla.py --workdir=...          # the paper's baseline
  python -m climb_jax.main --config=configs/vanilla.py:smoke --workdir=...    # minutes on a laptop CPU
  python -m climb_jax.main --config=configs/vanilla.py:large,bf16 --workdir=...

Preset words: small, medium, large, tiny, bf16, smoke; and key=value pairs (trainer.lr=3e-4).
"""

from climb_jax.config import schema


# The baseline of launch/sweep.py's comparison grid: no preset words.
PAPER_GRID = [()]


def get_config(arg=None):
    return schema.build("vanilla", arg)
