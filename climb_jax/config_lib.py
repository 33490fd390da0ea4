"""The one configuration schema every `configs/*.py` file starts from, and its preset words.

Each file in `configs/` has a `get_config(arg)` (ml_collections, big_vision style): `arg` is a
comma-separated list of preset words (`smoke`, `large`, `log`, ...) and `key=value` pairs
(`trainer.lr=3e-4`). An unknown word or key, or a value of the wrong type, is a `ConfigError`
that names the valid choices. Command-line overrides (`--config.trainer.lr=3e-4`) are applied by
ml_collections afterwards and the resolved config is checked again by `validate`.
"""

from __future__ import annotations

import difflib
from typing import Callable, Mapping

from ml_collections import config_dict
from ml_collections.config_dict import ConfigDict

from climb_jax.errors import ConfigError

Preset = Callable[[ConfigDict], None]

# The seed's model presets (RoBERTa pre-layer-norm, untied embeddings).
MODEL_SIZES: dict[str, dict] = {
    "small": dict(num_layers=8, hidden_size=256, num_heads=8, intermediate_size=2048),
    "medium": dict(num_layers=10, hidden_size=500, num_heads=10, intermediate_size=2000),
    "large": dict(num_layers=12, hidden_size=768, num_heads=12, intermediate_size=3072),
    # The `smoke` model: trains and evaluates in minutes on a laptop CPU.
    "tiny": dict(num_layers=2, hidden_size=128, num_heads=4, intermediate_size=512),
}


def pacing_config(name: str = "none") -> ConfigDict:
    """A pacing function's parameters, with the seed's defaults."""
    return ConfigDict(
        dict(
            name=name,
            start_percent=0.0625,
            end_percent=0.875,
            starting_difficulty=0.1,
            max_difficulty=1.0,
        )
    )


def unit_config(task: str, start: float, end: float, tags: str = "", lr: float = 1e-3,
                schedule: str | None = None) -> ConfigDict:
    """One objective unit: its task, POS tag list, active window (fractions of training) and optimizer."""
    return ConfigDict(
        dict(
            task=task,  # "mlm" or "pos"
            tags=tags,  # comma-separated universal tags for a "pos" unit, e.g. "NOUN,VERB"
            start=start,
            end=end,
            lr=lr,
            # "trainer": the trainer's warmup/decay; "window": warmup over the first tenth of the unit's
            # window, then linear decay to zero at its end (the seed's per-unit schedule).
            schedule=schedule or ("trainer" if task == "mlm" else "window"),
            weight_decay=0.0,
            mask_probability_pos=0.4,  # "pos" units: tokens whose tag is in `tags`
            mask_probability_other=0.15,  # "pos" units: every other non-special token
        )
    )


def base_config() -> ConfigDict:
    """The vanilla CLIMB baseline (strict-small), with every curriculum present and switched off."""
    c = ConfigDict()
    c.name = "vanilla"
    c.label = ""  # the run's name in reports; default: "<config file stem>:<preset words>"
    c.seed = 0

    c.model = ConfigDict(
        dict(
            size="small",
            **MODEL_SIZES["small"],
            max_position_embeddings=512,
            dropout_rate=0.1,
            attention_dropout_rate=0.1,
            layer_norm_eps=1e-5,
            initializer_range=0.02,
            dtype="float32",  # activations; "bfloat16" on accelerators. Parameters stay float32.
        )
    )

    c.data = ConfigDict(
        dict(
            # "embedded" (the sample shipped in the package), a directory in a BabyLM layout,
            # or "hf:<dataset name>" for a Hugging Face dataset (network needed).
            corpus="embedded",
            hf_subset="strict_small",
            cache_dir=config_dict.placeholder(str),  # default: <workdir>/cache
            seq_len=128,
            vocab_size=8192,
            token_order="frequency",  # "frequency" (ids re-numbered by count) or "bpe" (raw merge ids)
            max_train_words=0,  # 0 = the whole training split; >0 takes a prefix of every source
            max_eval_words=0,  # the same for dev/test
            on_decode_error="skip",  # "skip" (count and report) or "fail"
            max_line_chars=20_000,  # longer lines are split at whitespace into pieces of this size
            nltk_data=config_dict.placeholder(str),  # default: $NLTK_DATA
            num_workers=0,  # tokenize+tag processes; 0 = one per core when the corpus is large enough
            prefetch=2,  # batches prepared ahead on a host thread
        )
    )

    c.trainer = ConfigDict(
        dict(
            total_steps=400_000,
            warmup_steps=100_000,
            lr=1e-3,
            end_lr=0.0,
            batch_size=128,  # global batch, split over the mesh's data axis
            weight_decay=0.0,
            adam_b1=0.9,
            adam_b2=0.999,
            adam_eps=1e-8,
            max_grad_norm=1.0,
            mask_probability=0.15,
            random_token_probability=0.1,  # of masked positions: replaced by a random token
            unmask_probability=0.1,  # of masked positions: left unchanged
            log_every=100,
            checkpoint_every=5_000,
            keep_checkpoints=3,
            eval_every=50_000,  # 0: evaluate at the end only
            async_checkpoints=True,
        )
    )

    c.eval = ConfigDict(
        dict(
            blimp_dir="embedded",  # "embedded" subset, or a directory of minimal-pair .jsonl files
            supplement_dir="",  # optional second suite (e.g. the BLiMP supplement); "" = none
            method="pll",  # "pll" or "pll_word_l2r"
            max_pairs_per_file=0,  # 0 = all pairs
            batch_size=256,  # masked copies per scoring batch
            perplexity_sequences=64,  # dev sequences for pseudo-perplexity; 0 = skip
            mlm_sequences=256,  # dev sequences for the fixed-mask MLM loss (one pass each); 0 = skip
            at_end=True,
        )
    )

    # Fine-tuning a finished run (`climb_jax.evaluate --tasks`, configs/finetune.py): the folder of
    # <task>.train.jsonl / <task>.valid.jsonl files. No default: such data is never bundled.
    c.finetune = ConfigDict(dict(data_dir=""))

    c.vocab_curriculum = ConfigDict(
        dict(
            kind="none",  # "none", "token_ids", "pos_tags", "pos_tags_and_token_ids"
            pacing=pacing_config("linear"),
            unk_targets="predict_unk",  # "predict_unk" (seed) or "exclude" replaced positions from the loss
        )
    )

    c.data_curriculum = ConfigDict(
        dict(
            scorer="none",  # "none", "source_order", "ngram_perplexity", "self_perplexity", "child_age"
            pacing=pacing_config("linear"),
            # True: uniform inside the allowed set (every data config of the seed); False: probability
            # proportional to the score (the seed scorers' default).
            uniform_sampling=False,
            source_order="spoken_first",  # "spoken_first", "grammatical_first", or "custom" with `source_difficulty`
            source_difficulty="",  # "custom" mapping: "aochildes:1,switchboard:2,..."
            n_gram=1,  # n-gram order for ngram/self perplexity; 0 = uniform initial scores
            ngram_smoothing=1.0,  # additive (Laplace/Lidstone) smoothing constant
            update_every=25_000,  # self_perplexity: re-score every this many steps
            rescore_fraction=1.0,  # self_perplexity: fraction of the training set re-scored
            rescore_batch_size=256,
        )
    )

    c.objective_curriculum = ConfigDict(
        dict(
            units=ConfigDict(dict(mlm=unit_config("mlm", 0.0, 1.0))),
        )
    )

    c.mesh = ConfigDict(
        dict(
            data=-1,  # -1: every device not used by fsdp x model
            fsdp=1,
            model=1,
            # On CPU: split the host into this many XLA devices (0 = one per core; 1 = JAX's default).
            # A data-parallel mesh over them keeps all cores busy (benchmarks/README.md: 1.1-1.5x on 2 cores).
            cpu_devices=1,
        )
    )
    c.distributed = ConfigDict(
        dict(
            initialize=False,  # call jax.distributed.initialize() (auto-detected on Cloud TPU)
            coordinator_address=config_dict.placeholder(str),
            num_processes=config_dict.placeholder(int),
            process_id=config_dict.placeholder(int),
        )
    )
    return c


# --------------------------------------------------------------------------------------------
# Preset words.


def _size(name: str) -> Preset:
    def apply(c: ConfigDict) -> None:
        c.model.size = name
        c.model.update(MODEL_SIZES[name])

    return apply


def apply_smoke(c: ConfigDict) -> None:
    """Shrink any config to a run that trains and evaluates in minutes on 2 CPU cores."""
    _size("tiny")(c)
    c.data.vocab_size = 2048
    c.data.max_train_words = 120_000
    c.data.max_eval_words = 20_000
    c.trainer.total_steps = 300
    c.trainer.warmup_steps = 30
    c.trainer.batch_size = 16
    c.trainer.log_every = 25
    c.trainer.checkpoint_every = 100
    c.trainer.eval_every = 0
    c.eval.max_pairs_per_file = 10
    c.eval.perplexity_sequences = 8
    c.eval.mlm_sequences = 16
    c.data_curriculum.update_every = 100
    c.data_curriculum.rescore_batch_size = 64


COMMON_PRESETS: dict[str, Preset] = {
    "small": _size("small"),
    "medium": _size("medium"),
    "large": _size("large"),
    "tiny": _size("tiny"),
    "bf16": lambda c: setattr(c.model, "dtype", "bfloat16"),
}


def _suggest(word: str, choices) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" Did you mean '{close[0]}'?" if close else ""


def _parse_value(raw: str, current, key: str):
    """Parses `raw` into the type of the existing field `current`."""
    kind = type(current)
    try:
        if isinstance(current, bool):
            low = raw.lower()
            if low not in ("true", "false", "1", "0"):
                raise ValueError(raw)
            return low in ("true", "1")
        if isinstance(current, int):
            return int(raw)
        if isinstance(current, float):
            return float(raw)
        if isinstance(current, tuple):
            return tuple(x for x in raw.split(";") if x)
    except ValueError:
        raise ConfigError(f"config key '{key}' takes a {kind.__name__}, not '{raw}'.") from None
    return raw


def set_path(c: ConfigDict, key: str, raw: str) -> None:
    """Sets `c.<key>` (dotted) from a string, with the existing field's type."""
    node = c
    parts = key.split(".")
    for i, part in enumerate(parts):
        if not isinstance(node, ConfigDict) or part not in node:
            where = ".".join(parts[:i]) or "the config"
            choices = sorted(node.keys()) if isinstance(node, ConfigDict) else []
            raise ConfigError(
                f"unknown config key '{key}': {where} has no field '{part}'.{_suggest(part, choices)}"
                f" Valid fields: {', '.join(choices)}."
            )
        if i < len(parts) - 1:
            node = node[part]
    last = parts[-1]
    current = node[last]
    if isinstance(current, ConfigDict):
        raise ConfigError(f"config key '{key}' is a group, not a value; set one of its fields.")
    if current is None:  # a placeholder: keep its declared type
        field = node.get_ref(last)
        typ = field.get_type()
        try:
            value = typ(raw) if typ is not str else raw
        except ValueError:
            raise ConfigError(f"config key '{key}' takes a {typ.__name__}, not '{raw}'.") from None
    else:
        value = _parse_value(raw, current, key)
    node[last] = value


def apply_arg(c: ConfigDict, arg: str | None, presets: Mapping[str, Preset]) -> ConfigDict:
    """Applies a `get_config` argument: preset words in order (`smoke` last), then key=value pairs."""
    words = [w.strip() for w in (arg or "").split(",") if w.strip()]
    all_presets = {**COMMON_PRESETS, **presets}
    pairs, smoke = [], False
    for word in words:
        if "=" in word:
            pairs.append(word.split("=", 1))
        elif word == "smoke":
            smoke = True
        elif word in all_presets:
            all_presets[word](c)
        else:
            valid = sorted(set(all_presets) | {"smoke"})
            raise ConfigError(
                f"unknown preset word '{word}'.{_suggest(word, valid)} Valid words: {', '.join(valid)},"
                " or key=value pairs such as trainer.lr=3e-4."
            )
    if smoke:
        apply_smoke(c)
    for key, raw in pairs:
        set_path(c, key.strip(), raw.strip())
    return c


def build(name: str, arg: str | None, presets: Mapping[str, Preset] | None = None,
          setup: Preset | None = None) -> ConfigDict:
    """The base config, named, with a config file's own `setup` and then its preset words."""
    c = base_config()
    c.name = name
    if setup is not None:
        setup(c)
    return apply_arg(c, arg, presets or {})


# --------------------------------------------------------------------------------------------
# Validation of a resolved config (after command-line overrides).

_CHOICES = {
    "data.token_order": ("frequency", "bpe"),
    "data.on_decode_error": ("skip", "fail"),
    "model.dtype": ("float32", "bfloat16"),
    "eval.method": ("pll", "pll_word_l2r"),
    "vocab_curriculum.kind": ("none", "token_ids", "pos_tags", "pos_tags_and_token_ids"),
    "vocab_curriculum.unk_targets": ("predict_unk", "exclude"),
    "data_curriculum.scorer": ("none", "source_order", "ngram_perplexity", "self_perplexity", "child_age"),
}


def _get(c: ConfigDict, dotted: str):
    node = c
    for part in dotted.split("."):
        node = node[part]
    return node


def validate(c: ConfigDict) -> None:
    """Raises `ConfigError` naming the first impossible setting; runs before any work is done."""
    for key, choices in _CHOICES.items():
        value = _get(c, key)
        if value not in choices:
            raise ConfigError(f"{key}='{value}' is not valid.{_suggest(str(value), choices)} Choose one of: {', '.join(choices)}.")
    m = c.model
    if m.hidden_size % m.num_heads:
        raise ConfigError(
            f"model.hidden_size={m.hidden_size} is not divisible by model.num_heads={m.num_heads}; "
            "choose a width that is a multiple of the head count."
        )
    for key in ("num_layers", "hidden_size", "num_heads", "intermediate_size"):
        if m[key] <= 0:
            raise ConfigError(f"model.{key} must be positive, got {m[key]}.")
    if c.data.seq_len < 8 or c.data.seq_len + 2 > m.max_position_embeddings + 2:
        raise ConfigError(
            f"data.seq_len={c.data.seq_len} must be at least 8 and at most model.max_position_embeddings="
            f"{m.max_position_embeddings}."
        )
    if c.data.vocab_size < 300:
        raise ConfigError(f"data.vocab_size={c.data.vocab_size} is too small: a byte-level BPE needs at least 261 + merges (use >= 300).")
    t = c.trainer
    if t.total_steps <= 0:
        raise ConfigError(f"trainer.total_steps must be positive, got {t.total_steps}.")
    if not 0 <= t.warmup_steps <= t.total_steps:
        raise ConfigError(f"trainer.warmup_steps={t.warmup_steps} must lie in [0, trainer.total_steps={t.total_steps}].")
    if t.batch_size <= 0:
        raise ConfigError(f"trainer.batch_size must be positive, got {t.batch_size}.")
    if not 0 < t.mask_probability < 1:
        raise ConfigError(f"trainer.mask_probability must lie in (0, 1), got {t.mask_probability}.")
    if t.random_token_probability < 0 or t.unmask_probability < 0 or t.random_token_probability + t.unmask_probability > 1:
        raise ConfigError("trainer.random_token_probability and trainer.unmask_probability must be >= 0 and sum to at most 1.")
    for key in ("log_every", "checkpoint_every", "keep_checkpoints"):
        if t[key] <= 0:
            raise ConfigError(f"trainer.{key} must be positive, got {t[key]}.")
    if t.lr <= 0:
        raise ConfigError(f"trainer.lr must be positive, got {t.lr}.")

    from climb_jax.curriculum import pacing, objectives  # late: keeps config loading light

    for section in ("vocab_curriculum", "data_curriculum"):
        try:
            pacing.PacingParams.from_config(c[section].pacing).validate()
        except ConfigError as e:
            raise ConfigError(f"{section}.pacing: {e}") from None
    objectives.validate_units(c.objective_curriculum.units)
    if c.data_curriculum.scorer == "self_perplexity" and c.data_curriculum.update_every <= 0:
        raise ConfigError("data_curriculum.update_every must be positive for self_perplexity.")
    if not 0 < c.data_curriculum.rescore_fraction <= 1:
        raise ConfigError("data_curriculum.rescore_fraction must lie in (0, 1].")
