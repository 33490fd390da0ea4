"""BLiMP loading, bookkeeping and pseudo-log-likelihood scoring against a direct computation."""

from __future__ import annotations

import gzip
import json
from functools import lru_cache
from pathlib import Path

import jax
import numpy as np
import pytest

from climb_jax.constants import MASK_ID, NUM_SPECIAL, SPECIAL_TOKENS
from climb_jax.errors import ConfigError, DataError
from climb_jax.eval.blimp import BlimpEvaluator, accuracy_report, encode_sentences
from climb_jax.eval.perplexity import PLLScorer
from climb_jax.eval.suites import EMBEDDED_DIR, FULL_BLIMP_DIR, load_suite

# --------------------------------------------------------------------------------------------
# Helpers shared with the other evaluation tests.


SAMPLE_TRAIN = Path(__file__).resolve().parent.parent / "climb_jax" / "data" / "sample" / "train"


def read_lines(n: int = 400) -> list[str]:
    """The first n/4 non-empty lines of four sources of the corpus sample shipped in the package."""
    lines = []
    for name in ("aochildes", "brown_fiction", "switchboard", "overheard"):
        with open(SAMPLE_TRAIN / f"{name}.train", encoding="utf-8") as f:
            lines += [line.strip() for line in f if line.strip()][: n // 4]
    return lines


@lru_cache(maxsize=2)
def tiny_tokenizer(vocab_size: int = 600):
    """A byte-level BPE trained on a few hundred lines of the sample, RoBERTa specials at ids 0-4."""
    from tokenizers import ByteLevelBPETokenizer, processors
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(read_lines(), vocab_size=vocab_size, min_frequency=2,
                            special_tokens=list(SPECIAL_TOKENS), show_progress=False)
    bpe.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token="<s>", eos_token="</s>",
                                  pad_token="<pad>", unk_token="<unk>", mask_token="<mask>")
    assert [tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS] == list(range(NUM_SPECIAL))
    return tok


@lru_cache(maxsize=2)
def tiny_model(vocab_size: int, max_positions: int = 64, seed: int = 0):
    from climb_jax.models.roberta import RobertaConfig, init_params

    cfg = RobertaConfig(vocab_size=vocab_size, hidden_size=64, num_layers=2, num_heads=4,
                        intermediate_size=128, max_position_embeddings=max_positions)
    params = init_params(jax.random.PRNGKey(seed), cfg)
    # Random init gives near-uniform predictions; larger weights make scores differ clearly.
    params = jax.tree_util.tree_map(lambda x: x * 8.0 if x.ndim == 2 else x, params)
    return cfg, params


@lru_cache(maxsize=4)
def _full_logits(cfg):
    from climb_jax.models.roberta import RobertaForMaskedLM

    model = RobertaForMaskedLM(cfg)
    return jax.jit(lambda params, ids: model.apply({"params": params}, ids))  # [1, L, V], no mask


def direct_pll(cfg, params, ids: np.ndarray, words: np.ndarray | None = None) -> float:
    """Unbatched reference: one full-model pass per masked copy, log_softmax at that position."""
    apply = _full_logits(cfg)
    total = 0.0
    for t in range(len(ids)):
        if ids[t] < NUM_SPECIAL:
            continue
        copy = ids.copy()
        copy[t] = MASK_ID
        if words is not None:
            for j in range(t + 1, len(ids)):
                if words[j] == words[t] and words[j] >= 0:
                    copy[j] = MASK_ID
        logits = apply(params, copy[None, :])[0, t]
        total += float(jax.nn.log_softmax(logits)[ids[t]])
    return total


def write_suite(directory: Path, files: dict[str, list]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, lines in files.items():
        with open(directory / f"{name}.jsonl", "w", encoding="utf-8") as f:
            for line in lines:
                f.write((line if isinstance(line, str) else json.dumps(line)) + "\n")
    return directory


# --------------------------------------------------------------------------------------------
# Loading.


def test_embedded_sample_is_blimp_filtered_prefix(shared_data):
    files = sorted(EMBEDDED_DIR.glob("*.jsonl"))
    assert len(files) == 67
    assert sum(f.stat().st_size for f in files) < 600_000
    assert (EMBEDDED_DIR.parent / "NOTICE.md").exists()
    for f in files[:5]:
        with open(shared_data / "blimp_filtered" / f.name, encoding="utf-8") as src:
            head = [next(src) for _ in range(20)]
        assert f.read_text(encoding="utf-8").splitlines(keepends=True) == head
    suite = load_suite("embedded", max_pairs_per_file=3)
    assert suite.name == "embedded" and suite.num_pairs == 67 * 3
    pair = suite.paradigms[0].pairs[0]
    assert pair.field == "syntax" and pair.term == "island_effects" and pair.pair_id == "0"


def test_bundled_full_suite(tmp_path):
    """The whole filtered BLiMP ships gzip-compressed; the embedded sample is its first 20 pairs per paradigm."""
    full = load_suite("blimp_filtered")
    assert full.name == "blimp_filtered" and len(full.paradigms) == 67 and full.num_pairs == 59_875
    assert sum(f.stat().st_size for f in FULL_BLIMP_DIR.iterdir()) < 2_000_000
    head = load_suite("blimp_filtered", max_pairs_per_file=20)
    assert head.pairs == load_suite("embedded").pairs
    # A user's suite may mix compressed and plain files; the same paradigm twice is refused.
    d = write_suite(tmp_path / "mixed", {"plain": [{"sentence_good": "A b.", "sentence_bad": "B a."}]})
    (d / "packed.jsonl.gz").write_bytes(gzip.compress(b'{"sentence_good": "C d.", "sentence_bad": "D c."}\n'))
    assert [p.name for p in load_suite(d).paradigms] == ["packed", "plain"]
    (d / "plain.jsonl.gz").write_bytes(gzip.compress(b'{"sentence_good": "C d.", "sentence_bad": "D c."}\n'))
    with pytest.raises(DataError, match="plain both compressed and not"):
        load_suite(d)
    (d / "plain.jsonl.gz").write_bytes(b"not gzip")
    (d / "plain.jsonl").unlink()
    with pytest.raises(DataError, match="cannot read minimal-pair file"):
        load_suite(d)


def test_bundled_full_suite_equals_the_shared_copy(shared_data):
    for path in sorted((shared_data / "blimp_filtered").glob("*.jsonl")):
        assert gzip.decompress((FULL_BLIMP_DIR / (path.name + ".gz")).read_bytes()) == path.read_bytes()


def test_full_blimp_keys_and_max_pairs(shared_data):
    suite = load_suite(shared_data / "blimp", max_pairs_per_file=2)
    assert suite.name == "blimp" and suite.num_pairs == 134
    assert suite.paradigms[0].pairs[1].pair_id == "1"  # BLiMP's `pairID`


def test_supplement_multiline_items(shared_data):
    suite = load_suite(shared_data / "blimp_supplement")
    names = [p.name for p in suite.paradigms]
    assert names == ["qa_congruence_easy", "turn_taking"]
    turn = suite.paradigms[1]
    assert len(turn.pairs) == 280
    assert turn.pairs[0].good == "David: Should you quit?\nSarah: No, I shouldn't."
    assert sum("\n" in p.good for p in turn.pairs) > 200
    assert turn.pairs[0].field is None and turn.pairs[0].term is None


def test_bad_files(tmp_path):
    good = {"sentence_good": "A cat sleeps.", "sentence_bad": "A cat sleep."}
    cases = {
        "malformed": ([good, '{"sentence_good": "x", '], r"malformed\.jsonl, line 2: not valid JSON"),
        "missing": ([good, good, {"sentence_good": "only one"}], r"missing\.jsonl, line 3: missing key\(s\) sentence_bad"),
        "notobject": (["[1, 2]"], r"notobject\.jsonl, line 1: expected a JSON object"),
        "emptysentence": ([{"sentence_good": "", "sentence_bad": "x"}], r"line 1: 'sentence_good' must be a non-empty"),
        "empty": ([], r"empty\.jsonl is empty"),
        "blank": (["", "  "], r"blank\.jsonl is empty"),
    }
    for name, (lines, pattern) in cases.items():
        d = write_suite(tmp_path / name, {name: lines})
        with pytest.raises(DataError, match=pattern):
            load_suite(d)
    with pytest.raises(DataError, match="does not exist"):
        load_suite(tmp_path / "nowhere")
    (tmp_path / "nofiles").mkdir()
    with pytest.raises(DataError, match="no \\*\\.jsonl \\(or \\*\\.jsonl.gz\\) files"):
        load_suite(tmp_path / "nofiles")
    with pytest.raises(ConfigError, match="max_pairs_per_file"):
        load_suite("embedded", max_pairs_per_file=-1)
    # Blank lines between records are fine; max_pairs stops before a later bad line.
    d = write_suite(tmp_path / "ok", {"ok": [good, "", good, "not json"]})
    assert load_suite(d, max_pairs_per_file=2).num_pairs == 2


def test_accuracy_bookkeeping_ties_count_as_right(tmp_path):
    def rec(i, field, term):
        return {"sentence_good": f"good {i}", "sentence_bad": f"bad {i}", "field": field,
                "linguistics_term": term, "UID": "x", "pairID": str(i)}

    d = write_suite(tmp_path / "hand", {
        "a": [rec(0, "syntax", "t1"), rec(1, "syntax", "t1"), rec(2, "morphology", "t2")],
        "b": [{"sentence_good": "g", "sentence_bad": "b"}],
    })
    suite = load_suite(d)
    good = np.array([-1.0, -5.0, -2.0, -3.0])
    bad = np.array([-1.0, -4.0, -3.0, -9.0])  # tie (right), wrong, right, right
    report = accuracy_report(suite, good, bad, method="pll")
    assert report["num_pairs"] == 4 and report["method"] == "pll" and report["suite"] == "hand"
    assert report["overall"] == pytest.approx(0.75)
    assert report["per_file"] == {"a": {"accuracy": pytest.approx(2 / 3), "num_pairs": 3},
                                  "b": {"accuracy": 1.0, "num_pairs": 1}}
    assert report["macro_accuracy"] == pytest.approx((2 / 3 + 1) / 2)
    assert report["per_field"] == {"morphology": {"accuracy": 1.0, "num_pairs": 1},
                                   "syntax": {"accuracy": 0.5, "num_pairs": 2}}
    assert report["per_term"]["t1"] == {"accuracy": 0.5, "num_pairs": 2}
    json.dumps(report)


# --------------------------------------------------------------------------------------------
# Scoring.


def test_word_ids_mark_multi_token_words():
    tok = tiny_tokenizer()
    ids, words = encode_sentences(tok, ["The zookeeper's anthropologists, reluctantly.", "Hi\nthere"],
                                  with_word_ids=True)
    assert ids[0][0] == 0 and ids[0][-1] == 2 and words[0][0] == -1 and words[0][-1] == -1
    tokens = tok.convert_ids_to_tokens(ids[0].tolist())
    # Every word starts at a 'Ġ' token or is punctuation; continuation pieces share the word id.
    for k in range(2, len(ids[0]) - 1):
        if words[0][k] != words[0][k - 1]:
            assert tokens[k].startswith("Ġ") or not tokens[k].isalnum()
    assert len(set(words[0][1:-1].tolist())) < len(ids[0]) - 2  # some word has several tokens


def test_pll_matches_direct_computation():
    tok = tiny_tokenizer()
    cfg, params = tiny_model(len(tok))
    suite = load_suite("blimp_filtered", max_pairs_per_file=1)
    pairs = suite.pairs[:2]
    sentences = [s for p in pairs for s in (p.good, p.bad)] + ["A: Hello there.\nB: Hi, you!"]
    scorer = None
    for method in ("pll", "pll_word_l2r"):
        ev = BlimpEvaluator(cfg, tok, "embedded", method=method, batch_size=16, max_pairs_per_file=1,
                            scorer=scorer)
        scorer = ev.scorer  # shared: the second method compiles nothing new
        got = ev.score_sentences(params, sentences)
        ids, words = encode_sentences(tok, sentences, with_word_ids=method == "pll_word_l2r")
        want = [direct_pll(cfg, params, i, None if words is None else w)
                for i, w in zip(ids, words or [None] * len(ids))]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
        if method == "pll":
            pll_scores = got
        else:  # an odd batch size: leftovers move across buckets; the scores do not change
            odd = PLLScorer(cfg, batch_size=3)
            np.testing.assert_allclose(odd.score(params, ids, words).scores, got, rtol=1e-6, atol=1e-5)
            assert odd.batch_sizes == (1, 3) and odd.shapes_run <= {(z, b) for z in (1, 3) for b in odd.buckets}
    # Sentences with multi-token words score differently under the two methods.
    assert np.any(np.abs(pll_scores - got) > 1e-3)


def test_evaluator_report_and_bounded_compiles(tmp_path):
    tok = tiny_tokenizer()
    cfg, params = tiny_model(len(tok), max_positions=40)  # a shape no other test compiles
    long = " ".join(["and the dog ran"] * 30)  # > 40 tokens: truncated
    d = write_suite(tmp_path / "mixed", {
        "short": [{"sentence_good": "The cat sleeps.", "sentence_bad": "The cat sleep."},
                  {"sentence_good": "Cats sleep.", "sentence_bad": "Cat sleep."}],
        "long": [{"sentence_good": long + ".", "sentence_bad": long + "!"}],
    })
    compiles = []

    def listener(event, duration, **kw):
        if event == "/jax/core/compile/backend_compile_duration" and "pll_token_logprob" in str(kw.get("fun_name")):
            compiles.append(kw["fun_name"])

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        ev = BlimpEvaluator(cfg, tok, d, batch_size=8)
        report = ev(params)
        ev(params)  # a second call reuses every compiled shape
        ev.score_sentences(params, ["A cat.", "Dogs."])
        compiled_first = len(compiles)
        BlimpEvaluator(cfg, tok, d, batch_size=8)(params)  # a new evaluator, same shapes: no compile
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    assert ev.scorer.buckets == (8, 12, 16, 20, 24, 32, 40)
    extra, _ = encode_sentences(tok, ["A cat.", "Dogs."])
    lengths = {len(i) for i in ev._ids + extra}
    assert max(lengths) > 40  # the long sentence really is long
    used = {ev.scorer.bucket_length(min(n, 40)) for n in lengths}
    assert len(used) < len(lengths)  # several lengths share a padded shape
    assert ev.scorer.batch_sizes == (1, 2, 4, 8)
    assert {b for _, b in ev.scorer.shapes_run} <= used and 40 in {b for _, b in ev.scorer.shapes_run}
    assert compiled_first == len(compiles) == len(ev.scorer.shapes_run) <= len(used) * 4
    assert report["truncated"] == 2 and report["num_pairs"] == 3 and report["num_sentences"] == 6
    assert set(report["per_file"]) == {"short", "long"}
    assert report["per_file"]["short"]["num_pairs"] == 2
    # Truncation keeps tokens and word ids aligned (first 39 positions and the final </s>).
    ids, words = encode_sentences(tok, [long + "."], with_word_ids=True)
    cut_ids = np.concatenate([ids[0][:39], ids[0][-1:]])
    cut_words = np.concatenate([words[0][:39], words[0][-1:]])
    full = ev.scorer.score(params, ids, words)
    cut = ev.scorer.score(params, [cut_ids], [cut_words])
    assert full.truncated == 1 and cut.truncated == 0
    np.testing.assert_allclose(full.scores, cut.scores, rtol=1e-6)
    json.dumps(report)


def test_bad_method_and_batch():
    from climb_jax.models.roberta import RobertaConfig

    tok = tiny_tokenizer()
    cfg = RobertaConfig(vocab_size=len(tok), hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128)
    with pytest.raises(ConfigError, match="pll_word_l2r"):
        BlimpEvaluator(cfg, tok, "embedded", method="pppl")
    with pytest.raises(ConfigError, match="batch_size"):
        BlimpEvaluator(cfg, tok, "embedded", batch_size=0)
