"""`validate`: the one place a resolved config is checked and parsed into the objects a run uses,
and the checks of a run's size against its data and its host. `schema` re-exports it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from ml_collections.config_dict import ConfigDict

from climb_jax.config import choices
from climb_jax.config.grammar import PROJECT_ROOT, suggest
from climb_jax.errors import ConfigError


# --------------------------------------------------------------------------------------------
# Validation of a resolved config (after command-line overrides): the one place config errors
# are raised, and the one place a config is turned into the objects the run uses.


@dataclasses.dataclass(frozen=True)
class Parsed:
    """What a valid config means, parsed once. `RunSetup` and the plots consume this instead of
    re-reading the ConfigDict. `model` has `data.vocab_size` as its vocabulary; the run replaces it
    with its tokenizer's size (`dataclasses.replace(parsed.model, vocab_size=...)`)."""

    model: Any  # models.roberta.RobertaConfig
    units: tuple  # curriculum.objectives.Unit, MLM first
    vocab_pacing: Any  # curriculum.pacing.PacingParams, or None without a vocabulary curriculum
    data_pacing: Any  # curriculum.pacing.PacingParams, or None without a data curriculum
    total_steps: int


def _get(c: ConfigDict, dotted: str):
    node = c
    for part in dotted.split("."):
        node = node[part]
    return node


def _check_choices(c: ConfigDict) -> None:
    for key, valid in choices.FIELD_CHOICES.items():
        try:
            value = _get(c, key)
        except (KeyError, AttributeError):  # a section this config does not have
            continue
        if value not in valid:
            raise ConfigError(f"{key}='{value}' is not valid.{suggest(str(value), valid)} "
                              f"Choose one of: {', '.join(valid)}.")


def _check_numbers(c: ConfigDict) -> None:
    m = c.model
    for key in ("num_layers", "hidden_size", "num_heads", "intermediate_size"):
        if m[key] <= 0:
            raise ConfigError(f"model.{key} must be positive, got {m[key]}.")
    if m.hidden_size % m.num_heads:
        raise ConfigError(
            f"model.hidden_size={m.hidden_size} is not divisible by model.num_heads={m.num_heads}; "
            "choose a width that is a multiple of the head count."
        )
    if c.data.seq_len < 8 or c.data.seq_len > m.max_position_embeddings:
        raise ConfigError(
            f"data.seq_len={c.data.seq_len} must be at least 8 and at most model.max_position_embeddings="
            f"{m.max_position_embeddings}."
        )
    if c.data.vocab_size < 300:
        raise ConfigError(f"data.vocab_size={c.data.vocab_size} is too small: a byte-level BPE needs at least "
                          "261 + merges (use >= 300).")
    t = c.trainer
    if t.total_steps <= 0:
        raise ConfigError(f"trainer.total_steps must be positive, got {t.total_steps}.")
    if not 0 <= t.warmup_steps <= t.total_steps:
        raise ConfigError(f"trainer.warmup_steps={t.warmup_steps} must lie in [0, trainer.total_steps={t.total_steps}].")
    if t.batch_size <= 0:
        raise ConfigError(f"trainer.batch_size must be positive, got {t.batch_size}.")
    for key in ("log_every", "checkpoint_every", "keep_checkpoints"):
        if t[key] <= 0:
            raise ConfigError(f"trainer.{key} must be positive, got {t[key]}.")
    if t.lr <= 0:
        raise ConfigError(f"trainer.lr must be positive, got {t.lr}.")
    dc = c.data_curriculum
    if dc.scorer == "self_perplexity" and dc.update_every <= 0:
        raise ConfigError("data_curriculum.update_every must be positive for self_perplexity.")
    if not 0 < dc.rescore_fraction <= 1:
        raise ConfigError("data_curriculum.rescore_fraction must lie in (0, 1].")


def validate(c: ConfigDict, *, for_run: bool = False) -> Parsed:
    """Raises `ConfigError` naming the first impossible setting, before any work is done; returns the
    parsed objects. `for_run=True` (the command line) also refuses a paper-size run on the embedded
    sample (`check_scale`)."""
    _check_choices(c)
    _check_numbers(c)

    from climb_jax.curriculum import objectives, pacing  # late: keeps config loading free of JAX
    from climb_jax.models.roberta import RobertaConfig

    paced = {}
    for section, active in (("vocab_curriculum", c.vocab_curriculum.kind != "none"),
                            ("data_curriculum", c.data_curriculum.scorer != "none")):
        try:
            params = pacing.PacingParams.from_config(c[section].pacing).validate()
        except ConfigError as e:
            raise ConfigError(f"{section}.pacing: {e}") from None
        paced[section] = params if active else None
    units = objectives.validate_units(c.objective_curriculum.units)
    model = RobertaConfig.from_config(c.model, c.data.vocab_size)
    if for_run:
        check_scale(c)
    return Parsed(model=model, units=units, vocab_pacing=paced["vocab_curriculum"],
                  data_pacing=paced["data_curriculum"], total_steps=int(c.trainer.total_steps))


# --------------------------------------------------------------------------------------------
# Scale: a run's size against its data and its host.

# The embedded sample is a few hundred thousand words. A run that would pass over it more than this
# many times is a paper-size config that forgot `data.corpus`: the reference's own recipe passes
# about 500 times over BabyLM strict-small (400k steps x 128 rows x 128 tokens = 6.6B tokens over
# ~13M tokens), and every test, smoke run and benchmark on the sample stays under 100 passes.
EMBEDDED_MAX_PASSES = 1000
# Tokens per whitespace word of the sample, rounded up so that the estimate errs towards letting a run
# through: measured 1.44 at vocab_size 8192 (3604 rows of 128 tokens from 319k words) and 1.77 at the
# smoke preset's 2048 with per-line boundary tokens (1660 rows from 120k words).
_TOKENS_PER_WORD = 2.0
EMBEDDED_TRAIN_DIR = Path(__file__).resolve().parents[1] / "data" / "sample" / "train"


def embedded_rows(data_cfg) -> int:
    """About how many training rows the embedded sample gives with `data_cfg` (words x tokens/word
    / seq_len; `max_train_words` caps the total), without preparing the data."""
    words = sum(len(f.read_bytes().split()) for f in EMBEDDED_TRAIN_DIR.glob("*.train"))
    cap = int(data_cfg.max_train_words or 0)
    if cap > 0:
        words = min(words, cap)
    return max(1, int(words * _TOKENS_PER_WORD / int(data_cfg.seq_len)))


def check_scale(c: ConfigDict) -> None:
    """Refuses a run that would pass over the embedded sample more than `EMBEDDED_MAX_PASSES` times."""
    if str(c.data.corpus) != choices.EMBEDDED_CORPUS:
        return
    rows = embedded_rows(c.data)
    passes = int(c.trainer.total_steps) * int(c.trainer.batch_size) / rows
    if passes > EMBEDDED_MAX_PASSES:
        raise ConfigError(
            f"data.corpus=embedded is the small sample shipped with the package (about {rows} rows of "
            f"{c.data.seq_len} tokens), and {c.trainer.total_steps} steps of {c.trainer.batch_size} rows would "
            f"pass over it about {passes:,.0f} times (at most {EMBEDDED_MAX_PASSES:,} allowed). Train on the BabyLM "
            "corpus with --config.data.corpus=<folder with train/dev/test> (or hf:<dataset name>), or make a "
            f"short run with the smoke preset (--config={_config_name(c)}:smoke)."
        )


def _config_name(c: ConfigDict) -> str:
    name = f"configs/{c.get('name', '')}.py"
    return name if (PROJECT_ROOT / name).is_file() else "configs/<file>.py"


# Model FLOP/s a CPU core sustains in the train step: benchmarks/README.md measured 118-153 GFLOP/s
# of model FLOPs (`small`, batch 32 x 128) on a 2-core host, i.e. 60-75 per core; the lower figure.
CPU_MODEL_FLOPS_PER_CORE = 60e9


def flops_per_token(c: ConfigDict, vocab_size: int | None = None) -> float:
    """Model FLOPs of one training token (forward and backward) of a dense implementation: 6 x the
    encoder's per-token matmul parameters (4H^2 + 2HI per layer), 12 x layers x L x H for attention
    scores and values, and 6 x (H^2 + HV) for the MLM head."""
    m = c.model
    h, i, layers, seq = int(m.hidden_size), int(m.intermediate_size), int(m.num_layers), int(c.data.seq_len)
    v = int(vocab_size or c.data.vocab_size)
    return 6 * layers * (4 * h * h + 2 * h * i) + 12 * layers * seq * h + 6 * (h * h + h * v)


def projected_cpu_seconds(c: ConfigDict, cores: int) -> float:
    """A rough training time on `cores` CPU cores (the train step only: no evaluation or data preparation)."""
    tokens = int(c.trainer.total_steps) * int(c.trainer.batch_size) * int(c.data.seq_len)
    return tokens * flops_per_token(c) / (CPU_MODEL_FLOPS_PER_CORE * max(1, cores))
