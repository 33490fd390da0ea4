"""Every list of choices a setting takes, and its default: written here once, read everywhere else.

Why one module: a choice list copied into the config schema, the validator, the module that acts on
the choice, the preset files and the sweep drifts (one copy gains a name, another keeps rejecting
it). Here each list is a tuple and each default a constant; `schema.validate` checks config
fields against `FIELD_CHOICES`, and the code that acts on a choice imports the same tuple.

This module imports nothing beyond the standard library, so the command line (`--help`), the sweep
and the config files can read the choices without starting JAX.

Adding a choice: add it to its tuple (and, for a config field, its entry in `FIELD_CHOICES`), then
teach the module that acts on it. A new setting with choices gets its tuple and default in its
section below.
"""

from __future__ import annotations

# ================================================================================================
# Model


# RoBERTa pre-layer-norm shapes (untied embeddings). small/medium/large are the reference's presets.
MODEL_SIZES: dict[str, dict[str, int]] = {
    "small": dict(num_layers=8, hidden_size=256, num_heads=8, intermediate_size=2048),
    "medium": dict(num_layers=10, hidden_size=500, num_heads=10, intermediate_size=2000),
    "large": dict(num_layers=12, hidden_size=768, num_heads=12, intermediate_size=3072),
    # The `smoke` model: trains and evaluates in minutes on a laptop CPU.
    "tiny": dict(num_layers=2, hidden_size=128, num_heads=4, intermediate_size=512),
}
DEFAULT_MODEL_SIZE = "small"  # the paper's
SMOKE_MODEL_SIZE = "tiny"

# Activation dtype; parameters stay float32 either way.
DTYPES = ("float32", "bfloat16")
DEFAULT_DTYPE = "float32"

# Initialisation of the objective units' heads: PyTorch's default Linear init with a zero decoder
# bias (the reference's heads are plain torch modules), or normal(initializer_range) like the encoder.
HEAD_INITS = ("torch", "normal")
DEFAULT_HEAD_INIT = "torch"

# ================================================================================================
# Data

# The ids the `token_ids` vocabulary curriculum ranks tokens by. "bpe": the tokenizer's raw merge ids,
# earliest merges lowest (the reference's code: its token-id map compares raw ids with pace * V);
# "frequency": non-special ids re-numbered by training-corpus count (the rule the paper states).
TOKEN_ORDERS = ("bpe", "frequency")
DEFAULT_TOKEN_ORDER = "bpe"

# Bytes that are not UTF-8: "skip" replaces and counts them; "fail" stops with the file and line.
DECODE_ERROR_POLICIES = ("skip", "fail")
DEFAULT_DECODE_ERROR_POLICY = "skip"
# A file with more undecodable bytes than this fraction is refused (data/text.py: not UTF-8 text).
DEFAULT_MAX_UNDECODABLE_FRACTION = 0.2
# Start-up warns when training would pass over its rows more often than this (0 = never warns).
DEFAULT_MAX_EPOCHS_WARNING = 10

# Corpus values that are not a directory: the sample shipped in the package; "hf:<name>" is a prefix.
EMBEDDED_CORPUS = "embedded"
HF_CORPUS_PREFIX = "hf:"

# --- Packing layouts (data.packing) --------------------------------------------------------------
# "reference": every line tokenized as `<s> line </s>`, the lines of a source concatenated and cut
# into rows of seq_len tokens (the reference's `join_sentences`), so rows hold the line boundaries;
# "concatenated": the lines joined with no separators, each row `<s> chunk </s>`.
PACKINGS = ("reference", "concatenated")
DEFAULT_PACKING = "reference"

# ================================================================================================
# Curricula: pacing

PACING_NAMES = ("linear", "quad", "root", "step", "exp", "log", "none")
DEFAULT_PACING = "linear"
# The pacing words the preset files accept (every function but "none", which switches a curriculum off).
PACING_WORDS = tuple(p for p in PACING_NAMES if p != "none")
# The pacing functions of the reference's curriculum configs (the comparison grid).
PAPER_PACINGS = ("linear", "log")
# The reference's pacing parameters: start at 6.25% of training from the easiest 10%, all by 87.5%.
PACING_DEFAULTS: dict[str, float] = dict(
    start_percent=0.0625,
    end_percent=0.875,
    starting_difficulty=0.1,
    max_difficulty=1.0,
)

# ================================================================================================
# Curricula: vocabulary

# The reference's kinds, then this project's `word_list` (a researcher's ranked word list).
PAPER_VOCAB_KINDS = ("token_ids", "pos_tags", "pos_tags_and_token_ids")
VOCAB_KINDS = ("none", *PAPER_VOCAB_KINDS, "word_list")
DEFAULT_VOCAB_KIND = "none"  # the base config: no vocabulary curriculum
VOCAB_CL_DEFAULT_KIND = "token_ids"  # configs/vocab_cl.py without a kind word
# The kinds of an active vocabulary curriculum (configs/vocab_cl.py's kind words).
VOCAB_CURRICULUM_KINDS = tuple(k for k in VOCAB_KINDS if k != "none")

# Targets of positions the curriculum replaced by <unk>: predicted as <unk> (the reference) or left
# out of the MLM loss.
UNK_TARGETS = ("predict_unk", "exclude")
DEFAULT_UNK_TARGETS = "predict_unk"

# ================================================================================================
# Curricula: where the step's curriculum comes from (curriculum/source.py)

# `schedule`: the pacing functions of the step (the paper); `adaptive`: paces rise when the run's loss
# stops improving (this project's extension), never below a floor schedule.
CURRICULUM_SOURCES = ("schedule", "adaptive")
DEFAULT_CURRICULUM_SOURCE = "schedule"
ADAPTIVE_TARGETS = ("vocab", "data", "vocab,data")  # which paces the adaptive source drives
ADAPTIVE_SIGNALS = ("train_loss", "dev_loss")  # the smoothed logged loss, or dev pseudo-perplexity

# ================================================================================================
# Curricula: data

SCORERS = ("none", "source_order", "ngram_perplexity", "self_perplexity", "child_age")
DEFAULT_SCORER = "none"  # the base config: no data curriculum
DATA_CL_DEFAULT_SCORER = "ngram_perplexity"  # configs/data_cl.py without a scorer word

# Named source orders live in curriculum/difficulty.py (with their mappings); "custom" reads
# data_curriculum.source_difficulty.
SOURCE_ORDERS = ("spoken_first", "grammatical_first", "custom")
DEFAULT_SOURCE_ORDER = "spoken_first"

# --- Self-perplexity estimators (data_curriculum.self_perplexity_estimator) ----------------------
# "pll": the reference's pseudo-perplexity, every position of a row masked in turn; "one_mask": one
# random mask per row (one forward pass instead of one per token: ~130x cheaper at L = 128, noisier).
SELF_PERPLEXITY_ESTIMATORS = ("pll", "one_mask")
DEFAULT_SELF_PERPLEXITY_ESTIMATOR = "pll"

# n-gram scorer: data_curriculum.ngram_smoothing is a number (0 = the reference's unsmoothed MLE,
# k > 0 = add-k); data_curriculum.ngram_include_specials (True = the reference) is a bool.
DEFAULT_NGRAM_SMOOTHING = 0.0

# ================================================================================================
# Curricula: objective

UNIT_TASKS = ("mlm", "pos")
# "trainer": the trainer's warmup/decay; "window": warmup over the first tenth of the unit's window,
# then linear decay to zero at its end (the reference's per-unit schedule).
UNIT_SCHEDULES = ("trainer", "window")
DEFAULT_UNIT_SCHEDULE = "window"  # every unit, the MLM head included (the reference)

# --- Masking settings (S: MLM corruption split, POS selection probabilities, ...) ----------------
# Each unit selects its targets independently per non-special token (Bernoulli) and corrupts them
# as mask / random token / unchanged with probabilities (1 - random - unmask, random, unmask).
MLM_MASK_PROBABILITY = 0.15  # an "mlm" unit: every non-special token
MLM_UNMASK_PROBABILITY = 0.0  # the reference's mlm unit (`unmask_probability: 0`): 90/10/0
POS_MASK_PROBABILITY = 0.4  # a "pos" unit: tokens whose tag is in the unit's list
OTHER_MASK_PROBABILITY = 0.15  # a "pos" unit: every other non-special token
POS_UNMASK_PROBABILITY = 0.1  # the reference's pos units: 80/10/10
RANDOM_TOKEN_PROBABILITY = 0.1  # every unit: of the selected, replaced by a token drawn from the whole vocabulary

# ================================================================================================
# Evaluation

EVAL_METHODS = ("pll", "pll_word_l2r")
DEFAULT_EVAL_METHOD = "pll"
EMBEDDED_SUITE = "embedded"  # eval.blimp_dir: the BLiMP subset shipped in the package (20 pairs per paradigm)
FULL_BLIMP_SUITE = "blimp_filtered"  # eval.blimp_dir: the whole BabyLM-filtered BLiMP, also shipped (gzip)

# --- Checkpoint selection (T: the reference's best-by-dev-perplexity, and "last") ---------------
# Which checkpoint the final evaluation scores: the one with the lowest mean dev pseudo-perplexity
# among those taken at every eighth of training (the reference: `load_best_model_at_end` on
# `eval_perplexity_mean`), or the last one.
CHECKPOINT_SELECTIONS = ("best_dev_perplexity", "last")
DEFAULT_CHECKPOINT_SELECTION = "best_dev_perplexity"

# ================================================================================================
# Fine-tuning

# The BabyLM 2023 filtered (Super)GLUE tasks, in report order; their descriptions (fields, classes,
# metrics) are eval/tasks.py's BUILTIN_TASKS.
# "mnli-mm" trains on MNLI and is scored on its mismatched validation set, a task of its own as in
# the reference.
TASKS = ("rte", "mrpc", "wsc", "boolq", "multirc", "mnli", "mnli-mm", "qqp", "cola", "sst2", "qnli")

# Fine-tuning protocols (finetune.protocol; their values: eval/finetune_config.py's PROTOCOLS).
# "babylm2023": the BabyLM 2023 pipeline's recipe as the reference ran it (evaluation every 200 steps,
# patience 10, seed 12, the pipeline's inputs and metrics); "per_epoch": evaluation after every
# epoch with early stopping after 3 epochs without improvement (this project's earlier recipe).
FINETUNE_PROTOCOLS = ("babylm2023", "per_epoch")
DEFAULT_FINETUNE_PROTOCOL = "babylm2023"

# finetune.data_dir: the fine-tuning sample shipped in the package (eval/sample/glue/, the first rows
# of BabyLM's filtered WSC), the smoke preset's default when no folder is given; it holds this task.
EMBEDDED_FINETUNE_DATA = "embedded"
EMBEDDED_FINETUNE_TASK = "wsc"

# ================================================================================================
# Config fields with a fixed list of choices: `schema.validate` checks each (dotted key -> tuple).

FIELD_CHOICES: dict[str, tuple[str, ...]] = {
    "model.dtype": DTYPES,
    "model.head_init": HEAD_INITS,
    "data.token_order": TOKEN_ORDERS,
    "data.on_decode_error": DECODE_ERROR_POLICIES,
    "data.packing": PACKINGS,
    "vocab_curriculum.kind": VOCAB_KINDS,
    "curriculum.source": CURRICULUM_SOURCES,
    "curriculum.adaptive.targets": ADAPTIVE_TARGETS,
    "curriculum.adaptive.signal": ADAPTIVE_SIGNALS,
    "vocab_curriculum.unk_targets": UNK_TARGETS,
    "vocab_curriculum.pacing.name": PACING_NAMES,
    "data_curriculum.scorer": SCORERS,
    "data_curriculum.source_order": SOURCE_ORDERS,
    "data_curriculum.self_perplexity_estimator": SELF_PERPLEXITY_ESTIMATORS,
    "data_curriculum.pacing.name": PACING_NAMES,
    "eval.method": EVAL_METHODS,
    "eval.select": CHECKPOINT_SELECTIONS,
}
