"""The one configuration schema every `configs/*.py` file starts from, and its preset words.

Each file in `configs/` has a `get_config(arg)` (ml_collections, big_vision style) that starts from
`base_config()` and applies `arg` with `apply_arg`: preset words (`smoke`, `large`, `log`, ...) and
`key=value` items (`trainer.lr=3e-4`; a list in brackets: `finetune.text_fields=[premise,hypothesis]`),
in the grammar of `grammar`. Command-line overrides (`--config.trainer.lr=3e-4`) are applied
by ml_collections afterwards, and the resolved config is checked by `validate` (`check`),
which returns the `Parsed` objects the run uses. The lists of choices and their defaults are
`climb_jax.config.choices`. This module re-exports the grammar, the loader and the checks, so config users
import only `schema`.
"""

from __future__ import annotations

from typing import Callable, Mapping

from ml_collections import config_dict
from ml_collections.config_dict import ConfigDict

from climb_jax.config import choices
from climb_jax.config.finetune_section import finetune_section

# The checks and the grammar (with the loader) live in their own modules; config users import them
# from here.
from climb_jax.config.check import (  # noqa: F401
    CPU_MODEL_FLOPS_PER_CORE, EMBEDDED_MAX_PASSES, Parsed, check_scale, embedded_rows, flops_per_token,
    projected_cpu_seconds, validate)
from climb_jax.config.grammar import (  # noqa: F401
    CONFIG_DIR, PROJECT_ROOT, PresetArg, Setting, config_files, default_label, format_arg, load, load_module,
    parse_arg, resolve_config_path, set_path, split_spec, suggest, unknown_word)

Preset = Callable[[ConfigDict], None]

# Re-exported: the model shapes are a list of choices (choices.MODEL_SIZES).
MODEL_SIZES = choices.MODEL_SIZES


def pacing_config(name: str = choices.DEFAULT_PACING) -> ConfigDict:
    """A pacing function's parameters, with the reference's defaults (choices.PACING_DEFAULTS)."""
    return ConfigDict(dict(name=name, **choices.PACING_DEFAULTS))


def unit_config(task: str, start: float, end: float, tags: str = "", lr: float = 1e-3,
                schedule: str | None = None) -> ConfigDict:
    """One objective unit: its task, POS tag list, active window (fractions of training) and optimizer."""
    return ConfigDict(
        dict(
            task=task,  # choices.UNIT_TASKS
            tags=tags,  # comma-separated universal tags for a "pos" unit, e.g. "NOUN,VERB"
            start=start,
            end=end,
            lr=lr,
            schedule=schedule or choices.DEFAULT_UNIT_SCHEDULE,  # choices.UNIT_SCHEDULES
            weight_decay=0.0,
            adam_eps=1e-6,  # the reference's heads use transformers.AdamW's default eps
            # Masking (each non-special token selected independently; choices.py's masking section):
            mask_probability=choices.MLM_MASK_PROBABILITY,  # "mlm" units: every non-special token
            mask_probability_pos=choices.POS_MASK_PROBABILITY,  # "pos" units: tokens whose tag is in `tags`
            mask_probability_other=choices.OTHER_MASK_PROBABILITY,  # "pos" units: every other non-special token
            random_probability=choices.RANDOM_TOKEN_PROBABILITY,  # of the selected: a random token
            unmask_probability=(choices.MLM_UNMASK_PROBABILITY if task == "mlm"
                                else choices.POS_UNMASK_PROBABILITY),  # of the selected: left unchanged
        )
    )


def base_config() -> ConfigDict:
    """The vanilla CLIMB baseline (strict-small), with every curriculum present and switched off."""
    c = ConfigDict()
    c.name = "vanilla"
    c.label = ""  # the run's name in reports; default: "<config file stem>:<preset words>"
    c.seed = 42  # the reference's

    c.model = ConfigDict(
        dict(
            size=choices.DEFAULT_MODEL_SIZE,
            **MODEL_SIZES[choices.DEFAULT_MODEL_SIZE],
            max_position_embeddings=512,
            dropout_rate=0.1,
            attention_dropout_rate=0.1,
            layer_norm_eps=1e-5,
            initializer_range=0.02,
            # The objective units' heads (MLM and POS): the reference builds them from a default
            # RobertaConfig (layer-norm eps 1e-12) as plain torch modules (PyTorch's default Linear init).
            head_layer_norm_eps=1e-12,
            head_init=choices.DEFAULT_HEAD_INIT,  # choices.HEAD_INITS
            dtype=choices.DEFAULT_DTYPE,  # activations; "bfloat16" on accelerators. Parameters stay float32.
        )
    )

    c.data = ConfigDict(
        dict(
            # "embedded" (the sample shipped in the package), a directory in a BabyLM layout,
            # or "hf:<dataset name>" for a Hugging Face dataset (network needed).
            corpus=choices.EMBEDDED_CORPUS,
            hf_subset="strict_small",
            cache_dir=config_dict.placeholder(str),  # default: <workdir>/cache
            # The prepared dataset (TFDS, array_record shards in difficulty order; `python -m climb_jax.prepare`):
            # a local folder or gs://...; default: <cache_dir>/prepared
            prepared_dir=config_dict.placeholder(str),
            shards=8,  # array_record shards of the training split
            seq_len=128,
            vocab_size=8192,
            token_order=choices.DEFAULT_TOKEN_ORDER,  # choices.TOKEN_ORDERS
            packing=choices.DEFAULT_PACKING,  # choices.PACKINGS: rows with the lines' <s> ... </s> (reference)
            max_train_words=0,  # 0 = the whole training split; >0 = about this many words, shared among sources by size
            max_eval_words=0,  # the same for dev/test
            on_decode_error=choices.DEFAULT_DECODE_ERROR_POLICY,  # choices.DECODE_ERROR_POLICIES
            # A file with a larger share of bytes that are not UTF-8 is refused (1 = accept any file)
            max_undecodable_fraction=choices.DEFAULT_MAX_UNDECODABLE_FRACTION,
            # Start-up warns when training passes over its rows more often than this (0 = never)
            max_epochs_warning=choices.DEFAULT_MAX_EPOCHS_WARNING,
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
            log_every=100,
            checkpoint_every=5_000,
            keep_checkpoints=3,
            eval_every=50_000,  # 0: evaluate at the end only
            async_checkpoints=True,
        )
    )

    c.eval = ConfigDict(
        dict(
            # The whole BabyLM-filtered BLiMP (bundled; the reference's suite), the embedded 20-pair-per-paradigm
            # subset (choices.EMBEDDED_SUITE, smoke runs), or a directory of minimal-pair .jsonl files
            blimp_dir=choices.FULL_BLIMP_SUITE,
            supplement_dir="",  # optional second suite (e.g. the BLiMP supplement); "" = none
            method=choices.DEFAULT_EVAL_METHOD,  # choices.EVAL_METHODS
            max_pairs_per_file=0,  # 0 = all pairs
            batch_size=256,  # masked copies per scoring batch
            perplexity_sequences=64,  # dev sequences for pseudo-perplexity; 0 = skip
            mlm_sequences=256,  # dev sequences for the fixed-mask MLM loss (one pass each); 0 = skip
            # Checkpoint-selection metric (Evaluator.dev_perplexity): mean and std of per-row pseudo-perplexity
            # over about this many dev rows taken at a fixed stride (the reference's sample: 10,000)
            dev_perplexity_sequences=10_000,
            at_end=True,
            # Which checkpoint the final evaluation scores (choices.CHECKPOINT_SELECTIONS): the best by
            # dev pseudo-perplexity at every eighth of training (the reference), or the last.
            select=choices.DEFAULT_CHECKPOINT_SELECTION,
        )
    )

    # Fine-tuning a finished run (`climb_jax.evaluate --tasks`, configs/finetune.py).
    c.finetune = finetune_section()

    c.vocab_curriculum = ConfigDict(
        dict(
            kind=choices.DEFAULT_VOCAB_KIND,  # choices.VOCAB_KINDS
            pacing=pacing_config(),
            unk_targets=choices.DEFAULT_UNK_TARGETS,  # choices.UNK_TARGETS
            # kind=word_list: a TSV of `word<TAB>rank` (e.g. age of acquisition in months; written by
            # `python -m climb_jax.word_list`); ids no listed word spells enter at this pace (1.0: last)
            word_list="",
            unlisted_pace=1.0,
        )
    )

    # Where the step's curriculum comes from (curriculum/source.py): the pacing functions above
    # (`schedule`, the paper) or a controller that advances the vocabulary and/or data pace whenever the
    # loss stops improving (`adaptive`, this project's extension beyond CLIMB).
    c.curriculum = ConfigDict(
        dict(
            source=choices.DEFAULT_CURRICULUM_SOURCE,  # choices.CURRICULUM_SOURCES
            adaptive=dict(
                targets="vocab",  # choices.ADAPTIVE_TARGETS: the paces the controller drives
                signal="train_loss",  # choices.ADAPTIVE_SIGNALS: smoothed logged loss, or dev pseudo-perplexity
                start=0.1,  # the paces' value at step 0
                increment=0.1,  # added to each driven pace at a plateau
                patience=1_000,  # steps without an improvement of more than `tolerance` that make a plateau
                tolerance=0.01,  # improvement of the smoothed signal (in its own units) that resets the wait
                smoothing=0.9,  # exponential moving average of the signal at each observation
                # The floor: a pacing function the paces never fall below; its end_percent is the latest
                # fraction of training by which they reach 1.0.
                floor=pacing_config("linear"),
            ),
        )
    )

    c.data_curriculum = ConfigDict(
        dict(
            scorer=choices.DEFAULT_SCORER,  # choices.SCORERS
            pacing=pacing_config(),
            # True: uniform inside the allowed set (every data config of the reference); False: probability
            # proportional to the score (the reference scorers' default).
            uniform_sampling=False,
            source_order=choices.DEFAULT_SOURCE_ORDER,  # choices.SOURCE_ORDERS; "custom" reads `source_difficulty`
            source_difficulty="",  # "custom" mapping: "aochildes:1,switchboard:2,..."
            n_gram=1,  # n-gram order for ngram/self perplexity; 0 = uniform initial scores
            # 0 = the reference's unsmoothed MLE; k > 0 adds k to every count (Laplace/Lidstone)
            ngram_smoothing=choices.DEFAULT_NGRAM_SMOOTHING,
            ngram_include_specials=True,  # the reference counts <s>, </s> (every token but <pad>)
            update_every=25_000,  # self_perplexity: re-score every this many steps
            rescore_fraction=1.0,  # self_perplexity: fraction of the training set re-scored
            # self_perplexity: "pll" (the reference: every position masked in turn) or "one_mask"
            # (one random mask per row: one forward pass instead of one per token, ~130x cheaper)
            self_perplexity_estimator=choices.DEFAULT_SELF_PERPLEXITY_ESTIMATOR,  # choices.SELF_PERPLEXITY_ESTIMATORS
            rescore_batch_size=256,  # masked sequences per scoring call (rows for one_mask, copies for pll)
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
    c.eval.blimp_dir = choices.EMBEDDED_SUITE
    c.eval.max_pairs_per_file = 10
    c.eval.perplexity_sequences = 8
    c.eval.mlm_sequences = 16
    c.eval.dev_perplexity_sequences = 16
    c.data_curriculum.update_every = 100
    c.data_curriculum.rescore_batch_size = 64
    # The reference's estimator runs one forward pass per token: a re-scoring of the smoke data takes
    # about 130x longer than with one mask per row (minutes instead of seconds on 2 CPU cores).
    c.data_curriculum.self_perplexity_estimator = "one_mask"


COMMON_PRESETS: dict[str, Preset] = {
    "small": _size("small"),
    "medium": _size("medium"),
    "large": _size("large"),
    "tiny": _size("tiny"),
    "bf16": lambda c: setattr(c.model, "dtype", "bfloat16"),
}


# --------------------------------------------------------------------------------------------
# Applying a preset argument (the grammar: grammar.py).


def apply_arg(c: ConfigDict, arg: str | None, presets: Mapping[str, Preset], *,
              smoke: Preset | None = None, common: Mapping[str, Preset] | None = None,
              where: str = "") -> ConfigDict:
    """Applies a `get_config` argument: preset words in order (`smoke` last), then key=value items.

    `smoke` is the file's smoke preset (default `apply_smoke`); `common` the words every file shares
    (default `COMMON_PRESETS`: the model sizes and bf16); `where` names the file in errors."""
    parsed = parse_arg(arg)
    all_presets = {**(COMMON_PRESETS if common is None else common), **presets}
    use_smoke = False
    for word in parsed.words:
        if word == "smoke":
            use_smoke = True
        elif word in all_presets:
            all_presets[word](c)
        else:
            raise unknown_word(word, set(all_presets) | {"smoke"}, parsed, where, c)
    if use_smoke:
        (smoke or apply_smoke)(c)
    for s in parsed.settings:
        set_path(c, s.key, s.value)
    return c


def build(name: str, arg: str | None, presets: Mapping[str, Preset] | None = None,
          setup: Preset | None = None) -> ConfigDict:
    """The base config, named, with a config file's own `setup` and then its preset words."""
    c = base_config()
    c.name = name
    if setup is not None:
        setup(c)
    return apply_arg(c, arg, presets or {})
