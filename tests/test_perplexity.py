"""Pseudo-perplexity and the dev MLM loss against direct computations; mesh-sharded scoring."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from climb_jax.constants import BOS_ID, EOS_ID, MASK_ID, NUM_SPECIAL, PAD_ID
from climb_jax.errors import ConfigError, DataError
from climb_jax.eval.perplexity import PLLScorer, mlm_loss, mlm_masks, pseudo_perplexity
from tests.test_blimp import _full_logits, direct_pll, read_lines, tiny_model, tiny_tokenizer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def dev_rows(tok, n_rows: int, length: int) -> np.ndarray:
    """`<s> … </s>` rows of a fixed length cut from a token stream, as a prepared Split holds."""
    stream = [t for line in read_lines(200) for t in tok(line, add_special_tokens=False)["input_ids"]]
    body = length - 2
    rows = [[BOS_ID] + stream[i * body:(i + 1) * body] + [EOS_ID] for i in range(n_rows)]
    return np.asarray(rows, dtype=np.int32)


def test_pseudo_perplexity_matches_direct():
    tok = tiny_tokenizer()
    cfg, params = tiny_model(len(tok))
    rows = dev_rows(tok, 5, 20)
    got = pseudo_perplexity(params, cfg, rows, batch_size=32, num_sequences=3)
    total = sum(direct_pll(cfg, params, r) for r in rows[:3])
    tokens = int((rows[:3] >= NUM_SPECIAL).sum())
    assert got["num_sequences"] == 3 and got["num_tokens"] == tokens == 3 * 18
    assert got["pseudo_log_likelihood_per_token"] == pytest.approx(total / tokens, abs=1e-5)
    assert got["pseudo_perplexity"] == pytest.approx(math.exp(-total / tokens), rel=1e-5)
    # Padding inside a row is removed before scoring; a shared scorer gives the same number.
    padded = np.concatenate([rows[:3], np.full((3, 4), PAD_ID, np.int32)], axis=1)
    again = pseudo_perplexity(params, cfg, padded, num_sequences=3, scorer=PLLScorer(cfg, batch_size=32))
    assert again["pseudo_perplexity"] == pytest.approx(got["pseudo_perplexity"], rel=1e-5)
    with pytest.raises(DataError, match=r"shape \[N, L\]"):
        pseudo_perplexity(params, cfg, rows[0], num_sequences=1)
    with pytest.raises(DataError, match="no sequences"):
        pseudo_perplexity(params, cfg, rows[:0], num_sequences=1)


def test_mlm_masks_are_fixed_and_valid():
    ids = np.array([[0, 10, 11, 12, 13, 2], [0, 20, 2, 1, 1, 1], [0, 2, 1, 1, 1, 1]], dtype=np.int32)
    a = mlm_masks(ids, mask_probability=0.15, seed=3)
    b = mlm_masks(ids, mask_probability=0.15, seed=3)
    np.testing.assert_array_equal(a, b)
    assert not a[ids < NUM_SPECIAL].any()  # never a special token or padding
    assert a[0].sum() >= 1 and a[1].sum() == 1 and a[2].sum() == 0  # >= 1 where possible
    many = mlm_masks(np.tile(np.arange(5, 1005, dtype=np.int32), (4, 1)), mask_probability=0.15, seed=0)
    assert 0.12 < many.mean() < 0.18


def test_mlm_loss_matches_direct():
    tok = tiny_tokenizer()
    cfg, params = tiny_model(len(tok))
    rows = dev_rows(tok, 6, 24)
    got = mlm_loss(params, cfg, rows, batch_size=4, num_sequences=5, mask_probability=0.2, seed=1)
    chosen = mlm_masks(rows[:5], mask_probability=0.2, seed=1)
    logits = np.asarray(_full_logits(cfg)(params, np.where(chosen, MASK_ID, rows[:5]).astype(np.int32)))
    logp = np.asarray(jax.nn.log_softmax(logits, axis=-1))
    r, c = np.nonzero(chosen)
    nll = -logp[r, c, rows[:5][r, c]]
    assert got["num_masked"] == len(r) and got["num_sequences"] == 5
    assert got["mlm_loss"] == pytest.approx(nll.mean(), rel=1e-5)
    assert got["mlm_perplexity"] == pytest.approx(math.exp(nll.mean()), rel=1e-5)
    assert got["mlm_accuracy"] == pytest.approx(np.mean(logits[r, c].argmax(-1) == rows[:5][r, c]))
    # The batch size (and its padding) does not change the result.
    other = mlm_loss(params, cfg, rows, batch_size=3, num_sequences=5, mask_probability=0.2, seed=1)
    assert other["mlm_loss"] == pytest.approx(got["mlm_loss"], rel=1e-6)
    with pytest.raises(ConfigError, match="mask_probability"):
        mlm_loss(params, cfg, rows, mask_probability=1.5)


_MESH_SCRIPT = textwrap.dedent("""
    import numpy as np, jax
    from climb_jax.parallel.mesh import create_mesh
    from ml_collections import ConfigDict
    from climb_jax.errors import ConfigError
    from climb_jax.eval.blimp import BlimpEvaluator
    from tests.test_blimp import tiny_model, tiny_tokenizer
    assert jax.device_count() == 4
    tok = tiny_tokenizer()
    cfg, params = tiny_model(len(tok))
    mesh = create_mesh(ConfigDict(dict(data=-1, fsdp=1, model=1)))
    sentences = ["The cats sleep.", "Who should Derek hug?", "A dog ran.\\nIt did."]
    plain = BlimpEvaluator(cfg, tok, "embedded", max_pairs_per_file=1, batch_size=8).score_sentences(params, sentences)
    sharded = BlimpEvaluator(cfg, tok, "embedded", max_pairs_per_file=1, batch_size=8, mesh=mesh)
    got = sharded.score_sentences(params, sentences)
    np.testing.assert_allclose(got, plain, rtol=1e-5, atol=1e-5)
    try:
        BlimpEvaluator(cfg, tok, "embedded", batch_size=6, mesh=mesh)
        raise SystemExit("batch 6 on 4 devices was accepted")
    except ConfigError as e:
        assert "multiple of 4" in str(e)
    print("OK")
""")


def test_mesh_sharded_scoring_matches():
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO,
               XLA_FLAGS="--xla_force_host_platform_device_count=4")
    proc = subprocess.run([sys.executable, "-c", _MESH_SCRIPT],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr[-3000:]


def test_batching_plan_alone():
    """The planner (numpy only): every scorable position is scored exactly once, in few shapes."""
    from climb_jax.eval.batching import MLMPlan, PLLPlan, bucket_lengths, tail_sizes

    rng = np.random.default_rng(0)
    seqs = [np.r_[BOS_ID, rng.integers(NUM_SPECIAL, 50, size=n), EOS_ID].astype(np.int32)
            for n in rng.integers(1, 40, size=23)]
    words = [np.r_[-1, np.arange(len(s) - 2) // 2, -1].astype(np.int32) for s in seqs]  # two tokens per word
    buckets, sizes = bucket_lengths((8, 16, 24), 32), tail_sizes(8)
    assert buckets == (8, 16, 24, 32) and sizes == (1, 2, 4, 8) and tail_sizes(8, shards=2) == (2, 4, 8)
    plan = PLLPlan(seqs, words, buckets=buckets, batch_size=8, batch_sizes=sizes, max_len=32)
    assert plan.truncated == sum(len(s) > 32 for s in seqs)
    seen = []
    for batch in plan:
        assert batch.size in sizes and batch.width in buckets and 0 < batch.count <= batch.size
        ids, lengths, cols, targets = plan.inputs(batch)
        assert ids.shape == (batch.size, batch.width) and (lengths <= batch.width).all()
        assert (ids[np.arange(batch.size), cols] == MASK_ID).all()
        for r in range(batch.count):
            s, c = batch.seq_ids[r], batch.cols[r]
            original = plan.sequences[s]
            assert targets[r] == original[c] >= NUM_SPECIAL
            # PLL-word-l2r: the rest of the target's word to its right is masked too, nothing else.
            w = words[s][:len(original)] if len(seqs[s]) <= 32 else None
            if w is not None:
                hidden = np.nonzero(ids[r, :len(original)] == MASK_ID)[0]
                assert set(hidden) == {j for j in range(c, len(original)) if w[j] == w[c]}
        seen += list(plan.output_index(batch))
    want = [plan.offsets[i] + j for i, s in enumerate(plan.sequences) for j in np.nonzero(s >= NUM_SPECIAL)[0]]
    assert sorted(seen) == sorted(want) and len(seen) == plan.num_copies
    assert len(plan.shapes) <= len(buckets) * len(sizes)
    # The dev MLM loss's plan: fixed masks, padded rows carry weight 0.
    rows = np.stack([np.r_[BOS_ID, rng.integers(NUM_SPECIAL, 50, size=10), EOS_ID] for _ in range(5)]).astype(np.int32)
    mplan = MLMPlan(rows, mask_probability=0.3, seed=2, batch_size=4)
    parts = list(mplan)
    assert len(parts) == len(mplan) == 2 and parts[1][0].shape[0] == 4
    assert parts[1][3][1:].sum() == 0 and sum(p[3].sum() for p in parts) == mplan.num_masked
    chosen = mlm_masks(rows, mask_probability=0.3, seed=2)
    assert mplan.num_masked == chosen.sum()
