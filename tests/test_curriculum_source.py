"""The curriculum as an argument of the step: bit-identical schedules, one compile, adaptive pacing."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests import trajectory_driver


@pytest.mark.parametrize("name", list(trajectory_driver.RUNS))
def test_scheduled_curricula_are_bit_identical_to_the_self_computing_step(tmp_path, name):
    """The four smoke curricula, trained with the curriculum computed on the host and passed to the step,
    give every step's loss and gradient norm and every final parameter bit for bit as the step that
    computed its own curriculum from its step counter (tests/data/schedule_trajectories.json)."""
    want = json.loads(trajectory_driver.FIXTURE.read_text())[name]
    got = trajectory_driver.trajectory(name, tmp_path / "cache", tmp_path / "run")
    assert got["loss"] == want["loss"]
    assert got["grad_norm"] == want["grad_norm"]
    assert got["params"] == want["params"]


# --------------------------------------------------------------------------------------------
# The allowed vocabulary as ids.


def _old_rule(kind, ids, pos, pace, V):
    """The rule the step used to apply itself (compared per token with a float32 limit), written out."""
    from climb_jax.constants import NUM_SPECIAL, UNK_ID

    pace = np.float32(pace)
    if kind == "pos_tags":
        key, limit = pos.astype(np.int64), pace * np.float32(11)
    elif kind == "token_ids":
        key, limit = ids.astype(np.int64), pace * np.float32(V)
    else:
        key, limit = pos.astype(np.int64) * V + ids, pace * np.float32(11 * V)
    replaced = (key > np.floor(np.float32(limit))) & (ids >= NUM_SPECIAL) & (pace < 1.0)
    return np.where(replaced, UNK_ID, ids), replaced


@pytest.mark.parametrize("kind", ["token_ids", "pos_tags", "pos_tags_and_token_ids"])
def test_allowed_vocab_tables_equal_the_old_rule(kind):
    from climb_jax.curriculum import vocabulary

    V = 517
    rng = np.random.default_rng(0)
    ids = rng.integers(0, V, size=(8, 64))
    pos = rng.integers(0, 12, size=ids.shape)
    for pace in [0.0, 0.05, 0.1, 1 / 3, 0.5, 0.77, 0.999, 1.0, *rng.random(20)]:
        table = vocabulary.allowed_vocab(kind, pace, V)
        assert table.shape == (12, V) and table.dtype == bool
        got, replaced = vocabulary.apply_allowed(ids, pos, table)
        want, want_replaced = _old_rule(kind, ids, pos, pace, V)
        assert np.array_equal(np.asarray(got), want) and np.array_equal(np.asarray(replaced), want_replaced), pace


def test_word_list_table_follows_the_paced_rank():
    """allowed iff rank <= r_min + p (r_max - r_min); unlisted ids at `unlisted_pace`; specials always."""
    from climb_jax.curriculum import vocabulary

    V = 40
    ranks = np.full(V, np.inf, np.float32)
    ranks[5:25] = np.linspace(12, 50, 20)  # months
    for pace in [0.0, 0.2, 0.5, 0.99, 1.0]:
        for unlisted in (0.5, 1.0):
            table = np.asarray(vocabulary.allowed_vocab("word_list", pace, V, ranks, unlisted))
            want = np.where(np.isfinite(ranks), ranks <= np.float32(12) + np.float32(pace) * np.float32(38),
                            pace >= unlisted) | (np.arange(V) < 5) | (pace >= 1.0)
            assert np.array_equal(table, np.broadcast_to(want, (12, V))), (pace, unlisted)


# --------------------------------------------------------------------------------------------
# The adaptive controller.


def _params(**kw):
    from climb_jax.config import schema
    from climb_jax.curriculum.source import AdaptiveParams

    c = schema.base_config().curriculum.adaptive
    c.update(dict(start=0.2, increment=0.25, patience=10, tolerance=0.1, smoothing=0.0), **kw)
    return AdaptiveParams.from_config(c)


def test_plateau_controller_rises_at_plateaus_and_never_below_its_floor():
    from climb_jax.curriculum.source import PlateauController

    p = _params()
    ctl = PlateauController(p, total_steps=100)  # floor: the reference's linear pacing, 0.1 -> 1.0 over steps 6.25-87

    def floor(t):  # b + (M - b) * (t - a) / n with a = 6.25, n = floor(87.5 - 6.25) = 81
        return min(1.0, 0.1 + 0.9 * max(t - 6.25, 0.0) / 81)

    assert ctl.pace(0) == pytest.approx(0.2)
    assert not ctl.observe(10, 5.0)  # the first observation sets the best
    assert not ctl.observe(15, 4.0)  # improved by more than the tolerance: the wait restarts at 15
    assert not ctl.observe(20, 3.95)  # not enough, but only 5 steps since 15
    assert ctl.observe(25, 3.95)  # 10 steps without an improvement > 0.1: a plateau
    assert ctl.level == pytest.approx(max(0.2, floor(25)) + 0.25)
    assert ctl.pace(26) == pytest.approx(ctl.level)
    assert not ctl.observe(30, 3.9)  # the wait restarted at the plateau
    assert ctl.pace(88) == 1.0 and ctl.pace(80) == pytest.approx(floor(80))
    state = ctl.state_dict()
    again = PlateauController(p, total_steps=100)
    again.load_state_dict(state)
    assert again.state_dict() == state


def test_changed_adaptive_setting_is_refused_on_resume():
    from climb_jax.curriculum.source import PlateauController
    from climb_jax.errors import CheckpointError

    state = PlateauController(_params(), 100).state_dict()
    with pytest.raises(CheckpointError, match=r"curriculum\.adaptive\.increment=0\.25 but this run has 0\.5"):
        PlateauController(_params(increment=0.5), 100).load_state_dict(state)


@pytest.mark.parametrize("field,value,message", [
    ("increment", 0.0, r"curriculum\.adaptive\.increment=0\.0 must lie in \(0, 1\]"),
    ("patience", 0, r"curriculum\.adaptive\.patience=0 must be a positive number of steps"),
    ("smoothing", 1.0, r"curriculum\.adaptive\.smoothing=1\.0 must lie in \[0, 1\)"),
])
def test_bad_adaptive_settings(field, value, message):
    from climb_jax.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        _params(**{field: value})


# --------------------------------------------------------------------------------------------
# Runs: adaptive pacing (one compile, exact resume after SIGKILL), a word list.

# Patience 5 and a tolerance no 10-step improvement reaches: the paces rise at every log step from 20 on;
# the floor is 0 until step 36 (90 % of training), then 1.
ADAPTIVE = {"vocab_curriculum": dict(kind="token_ids"), "curriculum": dict(source="adaptive"),
            "curriculum.adaptive": dict(targets="vocab,data", patience=5, tolerance=5.0, increment=0.2, start=0.1),
            "curriculum.adaptive.floor": dict(name="step", start_percent=0.0, end_percent=0.9,
                                              starting_difficulty=0.0)}


@pytest.mark.slow
def test_adaptive_run_compiles_once_and_resumes_bit_exactly_after_sigkill(tmp_path):
    from tests.helpers import read_metrics, tiny_config, train
    from tests.test_faults import assert_killed, assert_ok, assert_same_run, checkpoint_steps, cli_args, run_cli

    config = tiny_config(tmp_path / "cache", name="data_cl", arg="smoke", **ADAPTIVE)
    reference = tmp_path / "reference"
    result = train(config, reference)
    assert result["train_step_compiles"] == 1
    lines = [r for r in read_metrics(reference) if "loss" in r]
    vocab = [r["vocab_pace"] for r in lines]
    data = [r["data_pace"] for r in lines]
    # A log line shows the pace of its last batch: 0.1 until the first plateau (observed at step 20, so batch
    # 20 on), 0.3 until the next (at 30), then the floor's 1.0 from batch 36.
    assert vocab == pytest.approx([0.1, 0.1, 0.3, 1.0], abs=1e-6) and data == pytest.approx(vocab, abs=1e-6)
    allowed = [r["vocab_allowed_ids"] for r in lines]
    assert allowed == sorted(allowed) and allowed[0] < allowed[-1]
    assert all(r["rows_above_threshold"] == 0 for r in lines)  # the sampler draws exactly

    workdir = tmp_path / "run"
    args = cli_args(config, "data_cl", "smoke", workdir)
    assert_killed(run_cli(args, "kill_at_step:27"), "kill_at_step")
    assert checkpoint_steps(workdir) == [20]
    proc = run_cli(args)
    assert_ok(proc)
    assert "resuming from the checkpoint at step 20" in proc.stdout
    assert_same_run(reference, workdir)  # the controller's state is saved with each checkpoint

    # The same workdir with another adaptive setting is refused, with one error line.
    (workdir / "checkpoints" / "40").rename(workdir / "checkpoints" / "40.hidden")
    changed = run_cli([a for a in args if "increment" not in a] + ["--config.curriculum.adaptive.increment=0.3"])
    assert changed.returncode == 2, changed.stderr[-2000:]
    assert "error: the checkpoint's adaptive curriculum used curriculum.adaptive.increment=0.2 but this run has 0.3" \
        in changed.stderr


def test_word_list_is_derived_from_the_age_ordered_sample_and_paces_a_run(tmp_path):
    from climb_jax.word_list import run as derive
    from tests.helpers import read_metrics, tiny_config, train

    tsv = tmp_path / "aoa.tsv"
    assert derive("embedded", "aochildes", str(tsv)).startswith("wrote ")
    rows = [l.split("\t") for l in tsv.read_text().splitlines() if not l.startswith("#")]
    ranks = [float(r) for _, r in rows]
    assert len(rows) > 500 and ranks == sorted(ranks) and ranks[0] == 0.0 and ranks[-1] <= 1.0
    words = [w for w, _ in rows]
    assert len(set(words)) == len(words)
    first_line = (__import__("climb_jax.data.corpus", fromlist=["EMBEDDED_DIR"]).EMBEDDED_DIR
                  / "train" / "aochildes.train").read_text().splitlines()[0].lower()
    assert all(float(r) == 0.0 for w, r in rows if w in first_line.split())

    c = tiny_config(tmp_path / "cache", name="vocab_cl", arg="word_list,smoke",
                    vocab_curriculum=dict(word_list=str(tsv)), trainer=dict(total_steps=40, log_every=5))
    result = train(c, tmp_path / "run")
    assert result["train_step_compiles"] == 1
    allowed = [r["vocab_allowed_ids"] for r in read_metrics(tmp_path / "run") if "loss" in r]
    assert allowed == sorted(allowed) and allowed[0] < allowed[-2] < allowed[-1]
    assert allowed[-1] == 600 - 5  # the full vocabulary at pace 1


@pytest.mark.parametrize("content,message", [
    (None, r"vocab_curriculum\.word_list='.*missing\.tsv' does not exist"),
    ("# only a comment\n\n", r"lists no words"),
    ("dog\t12\ncat\tearly\n", r"line 2: the rank 'early' of 'cat' is not a number"),
    ("dog\t12\ncat\t14\ndog\t20\n", r"line 3: 'dog' is listed twice"),
    ("dog 12\n", r"line 1: expected 'word<TAB>rank'"),
])
def test_bad_word_lists_are_refused(tmp_path, content, message):
    from climb_jax.curriculum import word_list
    from climb_jax.errors import ConfigError

    path = tmp_path / "missing.tsv"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError, match=message):
        word_list.read(str(path))


def test_word_list_covering_no_corpus_word_is_refused_from_the_command_line(tmp_path):
    import subprocess
    import sys

    from tests.conftest import REPO

    tsv = tmp_path / "klingon.tsv"
    tsv.write_text("qapla\t1\nghoghwij\t2\nvjIHaQ\t3\n")
    proc = subprocess.run([sys.executable, "-m", "climb_jax.main", "--config=configs/vocab_cl.py:word_list,smoke",
                           f"--config.vocab_curriculum.word_list={tsv}", f"--workdir={tmp_path / 'run'}",
                           f"--config.data.cache_dir={tmp_path / 'cache'}"],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [l for l in proc.stderr.splitlines() if l.startswith("error: ")]
    assert len(errors) == 1 and "none of its 3 words occurs in the training corpus" in errors[0], proc.stderr[-2000:]
