"""docs/fidelity.md, held to its word: every row names tests that exist, and the settings whose behaviour
tests pass their values explicitly have the reference's values in the configs the paper's runs load
(so changing a default fails here, beside the row that documents it)."""

from __future__ import annotations

import ast
import re

import numpy as np
import pytest

from climb_jax.config import choices
from tests.conftest import REPO
from tests.helpers import load_config

FIDELITY = REPO / "docs" / "fidelity.md"

# (row of docs/fidelity.md, config file[:preset words], dotted key, the reference's value). A key under
# `objective_curriculum.units.*` is checked for every unit of the config.
DEFAULTS = [
    ("Unit learning-rate schedule (item 1)", "objective_cl", "objective_curriculum.units.*.schedule", "window"),
    ("MLM head schedule (item 2)", "vanilla", "objective_curriculum.units.*.schedule", "window"),
    ("Encoder schedule", "vanilla", "trainer.lr", 1e-3),
    ("Encoder schedule", "vanilla", "trainer.warmup_steps", 100_000),
    ("Encoder schedule", "vanilla", "trainer.total_steps", 400_000),
    ("Encoder schedule", "vanilla", "trainer.end_lr", 0.0),
    ("Gradient clipping (item 4)", "vanilla", "trainer.max_grad_norm", 1.0),
    ("Heads' AdamW (item 11)", "objective_cl", "objective_curriculum.units.*.lr", 1e-3),
    ("Heads' AdamW (item 11)", "objective_cl", "objective_curriculum.units.*.adam_eps", 1e-6),
    ("Heads' AdamW (item 11)", "objective_cl", "objective_curriculum.units.*.weight_decay", 0.0),
    ("Encoder AdamW", "vanilla", "trainer.adam_eps", 1e-8),
    ("Encoder AdamW", "vanilla", "trainer.adam_b1", 0.9),
    ("Encoder AdamW", "vanilla", "trainer.adam_b2", 0.999),
    ("Encoder AdamW", "vanilla", "trainer.weight_decay", 0.0),
    ("Encoder init and layer-norm eps", "vanilla", "model.initializer_range", 0.02),
    ("Encoder init and layer-norm eps", "vanilla", "model.layer_norm_eps", 1e-5),
    ("Targets of hidden tokens", "vocab_cl", "vocab_curriculum.unk_targets", "predict_unk"),
    ("Token order", "vocab_cl", "data.token_order", "bpe"),
    ("Self-perplexity scorer (item 5, D)", "data_cl:self_perplexity", "data_curriculum.self_perplexity_estimator",
     "pll"),
    ("n-gram scorer (item 6, D)", "data_cl:ngram", "data_curriculum.n_gram", 1),
    ("n-gram scorer (item 6, D)", "data_cl:ngram", "data_curriculum.ngram_smoothing", 0.0),
    ("n-gram scorer (item 6, D)", "data_cl:ngram", "data_curriculum.ngram_include_specials", True),
    ("Packed rows (item 7, D)", "vanilla", "data.packing", "reference"),
    ("Data sampler and pace (D)", "data_cl", "data_curriculum.uniform_sampling", True),
    ("Checkpoint reported (item 8, T)", "vanilla", "eval.select", "best_dev_perplexity"),
    ("Checkpoint reported (item 8, T)", "vanilla", "eval.at_end", True),
    ("BLiMP suite (item 9, E)", "vanilla", "eval.blimp_dir", choices.FULL_BLIMP_SUITE),
    ("BLiMP suite (item 9, E)", "vanilla", "eval.max_pairs_per_file", 0),
    ("BLiMP pair decision (E)", "vanilla", "eval.method", "pll"),
    ("Dev perplexity, the selection metric (item 8's metric, E)", "vanilla", "eval.dev_perplexity_sequences",
     10_000),
    ("Tokenizer", "vanilla", "data.vocab_size", 8192),
    ("Sequence length", "vanilla", "data.seq_len", 128),
    ("Batch composition", "vanilla", "trainer.batch_size", 128),
    ("Random seed (item 11, C)", "vanilla", "seed", 42),
]


def rows() -> dict[str, list[str]]:
    """Every table row of docs/fidelity.md: its setting -> its cells."""
    out = {}
    for line in FIDELITY.read_text().splitlines():
        if line.startswith("| ") and not line.startswith(("| setting", "| ---")):
            cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
            out[cells[0]] = cells
    return out


def _value(config, dotted: str):
    node = config
    for part in dotted.split("."):
        node = node[part]
    return node


@pytest.mark.parametrize("row, config, key, reference", DEFAULTS,
                         ids=[f"{c}:{k}" for _, c, k, _ in DEFAULTS])
def test_the_paper_configs_have_the_references_values(row, config, key, reference):
    assert row in rows(), f"docs/fidelity.md has no row '{row}'"
    name, _, arg = config.partition(":")
    c = load_config(name, arg or None)
    if ".*." in key:
        section, field = key.split(".*.")
        units = _value(c, section)
        assert units and {u: units[u][field] for u in units} == {u: reference for u in units}
    else:
        assert _value(c, key) == reference, f"{row}: {config} {key}"


def test_model_sizes_are_the_references():
    """conf/model/roberta_pln_{small,medium,large}.yaml: layers, heads, width, feed-forward; small is the
    default, with untied embeddings and 512 positions."""
    for size, shape in {"small": (8, 8, 256, 2048), "medium": (10, 10, 500, 2000),
                        "large": (12, 12, 768, 3072)}.items():
        m = load_config("vanilla", None if size == "small" else size).model
        assert (m.num_layers, m.num_heads, m.hidden_size, m.intermediate_size) == shape, size
        assert m.size == size and m.max_position_embeddings == 512


def test_the_reported_checkpoint_is_chosen_among_every_eighth_of_training(tmp_path):
    """`load_best_model_at_end` on `eval_perplexity_mean`, evaluated every `max_training_steps // 8`."""
    from climb_jax.train.selection import CheckpointSelection

    c = load_config("vanilla")
    selection = CheckpointSelection(c, tmp_path, enabled=True)
    try:
        assert selection.points == {50_000 * k for k in range(1, 9)}
    finally:
        selection.close()


def test_every_row_cites_tests_that_exist():
    """Each row's last cell names at least one test as `file.py::name` (later names of the same file as
    `::name`), and each named test is defined in that file."""
    defined = {}
    for path in (REPO / "tests").glob("test_*.py"):
        defined[path.name] = {n.name for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.FunctionDef)}
    table = rows()
    assert len(table) > 40
    for setting, cells in table.items():
        cited, current = [], None
        for file, name in re.findall(r"`(test_\w+\.py)?::(\w+)(?:\[[^\]]*\])?`", cells[-1]):
            current = file or current
            cited.append((current, name))
        assert cited, f"'{setting}' cites no test"
        missing = [f"{f}::{n}" for f, n in cited if n not in defined.get(f, ())]
        assert not missing, f"'{setting}' cites tests that do not exist: {missing}"


def test_rank_zeros_dev_sample_under_the_references_four_process_launch():
    """The reference's dev sample is `range(process_index, N, N // (10_000 // world_size))` per process, and
    each process reports its own mean: under its 4-process launch the logged and selecting metric is rank
    0's `range(0, N, N // 2500)`. Ours is the one-process sample; 2500 rows give rank 0's exactly."""
    from climb_jax.eval import perplexity as ppl_lib

    assert load_config("vanilla").eval.dev_perplexity_sequences == 10_000  # one process's sample
    for n in (10_000, 27_181, 90_001):
        np.testing.assert_array_equal(ppl_lib.strided_rows(n, 10_000 // 4), np.arange(0, n, n // (10_000 // 4)))
        np.testing.assert_array_equal(ppl_lib.strided_rows(n, 10_000), np.arange(0, n, n // 10_000))


def test_a_hub_corpus_is_tagged_by_nltk_not_by_its_tagged_text(tmp_path, nltk_data):
    """The reference reads its POS tags from the hub dataset's `tagged_text` column (word__<label>__TAG);
    here every corpus, a Hugging Face one with such a column included, is tagged by NLTK's tagger: the
    corpus passes on the text alone and the tags come from the tagger."""
    datasets = pytest.importorskip("datasets")
    from climb_jax.config import schema
    from climb_jax.constants import POS_INDEX
    from climb_jax.data import corpus as corpus_lib, encoding, pos as pos_lib, tokenizer as tok_lib
    from climb_jax.data.text import ReadOptions

    text = ["The dog runs quickly .", "She reads a good book ."]
    every_word_a_number = [" ".join(f"{w}__<label>__NUM" for w in line.split()) for line in text]
    rows = {"text": text, "tagged_text": every_word_a_number, "filename": ["aochildes.train"] * 2}
    datasets.DatasetDict({"train": datasets.Dataset.from_dict(rows)}).save_to_disk(str(tmp_path / "hub"))
    data = schema.base_config().data
    data.corpus = f"hf:{tmp_path / 'hub'}"
    (source,) = corpus_lib.find_corpus(data).splits["train"]
    lines = list(source.lines(ReadOptions()))
    assert lines == text
    tok = tok_lib.train_bpe(iter(text * 20), 300)
    enc = encoding.encode_lines(lines, tok, pos_lib.load_tagger(str(nltk_data)))
    assert POS_INDEX["NUM"] not in enc.pos.tolist()
    first = tok.encode(text[0], add_special_tokens=False)
    assert enc.pos[0] == POS_INDEX["DET"] and first.tokens[0].lstrip("\u0120") == "The"
