"""Fault injection through the real command line: killed, preempted, corrupted, out of disk, diverged.

Every fault runs `python -m climb_jax.main` (through `tests/fault_driver.py`, which injects the fault
at a reproducible point) in a subprocess on the tiny settings of `tests.helpers.tiny_config`; the run
is then started again in the same workdir, and its final checkpoint (parameters, optimizer and
curriculum state, sampler position and scores), metrics log and evaluation must equal, bit for bit,
those of an uninterrupted run with the same config (run once per curriculum kind, in this process).

Kill points are drawn from a seeded generator (`KILL`): random, but the same on every run of the suite.
The vanilla tests form one chain in one workdir (each fault's rerun is the next fault's victim), so
they run in file order and each one skips when an earlier link failed.
"""

from __future__ import annotations

import errno
import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import jax
import numpy as np
import pytest

from climb_jax.data import prepared
from climb_jax.errors import CheckpointError
from climb_jax.eval.suites import EMBEDDED_DIR as EMBEDDED_BLIMP
from climb_jax.train.checkpoint import load_run
from tests.conftest import REPO
from tests.helpers import load_config, params_equal, tiny_config, train

SEED = 20261129
_rng = np.random.default_rng(SEED)
KILL = {
    "prep_stage": str(_rng.choice(["encode", "manifest", "publish"])),
    "before_first_checkpoint": int(_rng.integers(11, 20)),  # after the log line at 10, before the save at 20
    "sigterm": int(_rng.integers(21, 39)),  # the run saves at the next step, between 22 and 39
    "vocab_pause": int(_rng.integers(21, 40)),
    "data": int(_rng.choice([s for s in range(21, 40) if s != 30])),  # re-scorings at 15 and 30
    "objective": int(_rng.integers(5, 8)),  # the switch is at step 5; checkpoints every 4 steps
}
TIMING_KEYS = ("step_time_s", "tokens_per_s", "train_step_compiles")  # process-local telemetry
SIGTERM_BOUND_S = 120  # liveness bound for a preempted run to save and exit (it takes about a second)

VOCAB = {"vocab_curriculum": dict(kind="token_ids"), "vocab_curriculum.pacing": dict(name="linear")}
DATA = {"data_curriculum": dict(scorer="self_perplexity", update_every=15, n_gram=1, rescore_batch_size=32),
        "data_curriculum.pacing": dict(name="linear")}
OBJECTIVE = {"trainer": dict(checkpoint_every=4)}


# --------------------------------------------------------------------------------------------
# The command line, and what a finished run left behind.


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _fmt(v) -> str:
    return str(v).lower() if isinstance(v, bool) else str(v)


def cli_args(config, name: str, arg: str, workdir: Path) -> list[str]:
    """The command line that builds `config`: the config file and preset words, then one
    `--config.<key>=<value>` per field that differs from what they give."""
    base = _flatten(load_config(name, arg).to_dict())
    want = _flatten(config.to_dict())
    assert set(base) == set(want), set(base) ^ set(want)
    overrides = [f"--config.{k}={_fmt(v)}" for k, v in sorted(want.items()) if v != base[k]]
    return [f"--config=configs/{name}.py:{arg}", *overrides, f"--workdir={workdir}", "--progress=false",
            "--plot=false"]


def _env(fault: str | None) -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
    env.pop("CLIMB_FAULT", None)
    if fault:
        env["CLIMB_FAULT"] = fault
    return env


def run_cli(args: list[str], fault: str | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    module = "tests.fault_driver" if fault else "climb_jax.main"
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=_env(fault), capture_output=True,
                          text=True, timeout=timeout)


def start_cli(args: list[str], fault: str, log: Path) -> subprocess.Popen:
    with open(log, "w") as f:
        return subprocess.Popen([sys.executable, "-m", "tests.fault_driver", *args], cwd=REPO, env=_env(fault),
                                stdout=f, stderr=subprocess.STDOUT)


def wait_for(path: Path, text: str, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if path.exists() and text in path.read_text():
            return
        if proc.poll() is not None:
            raise AssertionError(f"process ended ({proc.returncode}) before '{text}':\n{path.read_text()[-3000:]}")
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for '{text}'")


def fault_fired(proc: subprocess.CompletedProcess, name: str) -> str:
    lines = [l for l in proc.stderr.splitlines() if l.startswith(f"FAULT {name}")]
    assert lines, f"fault {name} never fired (rc {proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return lines[-1]


def assert_killed(proc: subprocess.CompletedProcess, name: str) -> str:
    line = fault_fired(proc, name)
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, proc.stderr[-3000:])
    return line


def assert_ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, f"rc {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    assert "Traceback" not in proc.stderr, proc.stderr[-4000:]


def checkpoint_steps(workdir: Path) -> list[int]:
    d = Path(workdir) / "checkpoints"
    return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit()) if d.exists() else []


def _restore_tree(path: Path) -> dict:
    import orbax.checkpoint as ocp

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tree = ocp.PyTreeCheckpointer().restore(str(path))
    return {jax.tree_util.keystr(p): np.asarray(x) for p, x in jax.tree_util.tree_leaves_with_path(tree)}


def saved(workdir: Path, step: int) -> dict:
    """Everything a checkpoint holds: the train state, the sampler/meta JSON, the host scores."""
    d = Path(workdir) / "checkpoints" / str(step)
    out = {"state": _restore_tree(d / "state"), "meta": json.loads((d / "meta" / "metadata").read_text())}
    if (d / "host").exists():
        out["host"] = _restore_tree(d / "host")
    return out


def _untimed(x):
    """`x` without wall-clock fields (`seconds`, `*_s`): they differ between any two runs."""
    if isinstance(x, dict):
        return {k: _untimed(v) for k, v in x.items() if k != "seconds" and not k.endswith("_s")}
    return x


def our_traceback(stderr: str) -> bool:
    """A traceback through the project's own code: an error that escaped the command line's handling.
    Tracebacks with library frames only are diagnostics of libraries' own threads (orbax logs its failed
    writer thread; asyncio reports callbacks of a write abandoned on a full disk); they do not end the run."""
    blocks = stderr.split("Traceback (most recent call last)")[1:]
    return any("climb_jax/" in b.split("\nerror: ")[0] or "climb_jax.main" in b for b in blocks)


def error_line(stderr: str) -> str:
    lines = [l.strip() for l in stderr.splitlines() if l.strip().startswith("error: ")]
    assert len(lines) == 1, stderr[-3000:]
    return lines[0]


def metrics(workdir: Path) -> list[dict]:
    lines = (Path(workdir) / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(l).items() if k not in TIMING_KEYS} for l in lines]


def assert_same_run(reference: Path, workdir: Path, step: int = 40, evaluation: bool = False) -> None:
    """Bit-for-bit equality of the final checkpoint, the metrics log and (optionally) the evaluation."""
    a, b = saved(reference, step), saved(workdir, step)
    assert a["state"].keys() == b["state"].keys()
    differ = [k for k in a["state"] if a["state"][k].dtype != b["state"][k].dtype
              or not np.array_equal(a["state"][k], b["state"][k])]
    assert not differ, f"state differs from the uninterrupted run in {differ[:5]}"
    assert a["meta"] == b["meta"]
    assert a.keys() == b.keys()
    if "host" in a:
        assert all(np.array_equal(a["host"][k], b["host"][k]) for k in a["host"])
    assert metrics(reference) == metrics(workdir)
    if evaluation:
        name = f"eval/step_{step:06d}.json"
        assert _untimed(json.loads((reference / name).read_text())) == _untimed(json.loads((workdir / name).read_text()))


# --------------------------------------------------------------------------------------------
# Fixtures: the shared data cache, a small evaluation suite, and one uninterrupted run per kind.


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("fault_cache")


@pytest.fixture(scope="module")
def suite(tmp_path_factory) -> Path:
    """Three BLiMP paradigms of the sample shipped in the package: an evaluation that exercises the whole
    path and costs a second."""
    d = tmp_path_factory.mktemp("suite")
    for p in sorted(EMBEDDED_BLIMP.glob("*.jsonl"))[:3]:
        shutil.copy(p, d / p.name)
    return d


class Kind:
    """One curriculum kind: its config, its command line (for a given workdir) and its reference run."""

    def __init__(self, config, name: str, arg: str, reference: Path):
        self.config, self.name, self.arg, self.reference = config, name, arg, reference

    def args(self, workdir: Path, cache_dir: Path | None = None) -> list[str]:
        c = self.config
        if cache_dir is not None:
            c = c.copy_and_resolve_references()
            c.data.cache_dir = str(cache_dir)
        return cli_args(c, self.name, self.arg, workdir)


def _reference(tmp_path_factory, config, name, arg, label) -> Kind:
    workdir = tmp_path_factory.mktemp(f"reference_{label}") / "run"
    train(config, workdir)
    return Kind(config, name, arg, workdir)


@pytest.fixture(scope="module")
def vanilla(cache, suite, tmp_path_factory) -> Kind:
    """Vanilla, asynchronous checkpoints (the default of real runs) and an evaluation at the end."""
    c = tiny_config(cache, trainer=dict(async_checkpoints=True),
                    eval=dict(at_end=True, blimp_dir=str(suite), perplexity_sequences=8))
    return _reference(tmp_path_factory, c, "vanilla", "smoke", "vanilla")


# --------------------------------------------------------------------------------------------
# The vanilla chain: data preparation -> training -> checkpoint save -> SIGTERM -> evaluation.

_chain: dict = {"failed": None}


def link(test):
    """One link of the vanilla chain: skipped when an earlier link failed, and marks the chain broken
    when it fails itself (its workdir is then in no state for the next fault)."""

    @functools.wraps(test)
    def wrapper(*args, **kwargs):
        if _chain["failed"]:
            pytest.skip(f"an earlier link of the vanilla chain failed ({_chain['failed']})")
        try:
            return test(*args, **kwargs)
        except pytest.skip.Exception:
            raise
        except BaseException:
            _chain["failed"] = test.__name__
            raise

    return wrapper


@pytest.fixture
def chain(vanilla, tmp_path_factory):
    if "workdir" not in _chain:
        root = tmp_path_factory.mktemp("chain")
        _chain.update(workdir=root / "run", cache=root / "cache")
        _chain["args"] = vanilla.args(_chain["workdir"], _chain["cache"])
    return _chain


def _version(cache: Path) -> Path:
    """The one prepared version in a cache folder."""
    (version,) = (cache / "prepared" / prepared.NAME).iterdir()
    return version / prepared.TFDS_VERSION


@pytest.mark.slow
@link
def test_sigkill_during_data_preparation_leaves_nothing_that_looks_complete(chain):
    stage = KILL["prep_stage"]
    proc = run_cli(chain["args"], f"kill_in_data_prep:{stage}")
    assert_killed(proc, "kill_in_data_prep")
    entries = sorted(p.name for p in chain["cache"].iterdir())
    assert not list((chain["cache"] / "prepared").rglob(prepared.MARKER)), entries
    assert [e for e in entries if e.startswith(".tmp-data-")], entries  # the half-written folder
    assert not (chain["workdir"] / "checkpoints").exists()


@pytest.mark.slow
@link
def test_sigkill_during_training_before_the_first_checkpoint(chain, vanilla):
    n = KILL["before_first_checkpoint"]
    proc = run_cli(chain["args"], f"kill_at_step:{n}")
    assert_killed(proc, "kill_at_step")
    # The rerun rebuilt the data (the half-written folder is gone) into arrays equal to the shared cache's.
    entry, ref_entry = _version(chain["cache"]), _version(Path(vanilla.config.data.cache_dir))
    assert not list(chain["cache"].glob(".tmp-data-*"))
    assert (entry / "token_counts.npy").read_bytes() == (ref_entry / "token_counts.npy").read_bytes()
    rows, ref_rows = (prepared.open_rows(e, json.loads((e / prepared.MARKER).read_text())) for e in (entry, ref_entry))
    assert set(rows) == set(ref_rows)
    for name in rows:  # the same rows (the shards' bytes hold writer details, not only the rows)
        for field in ("input_ids", "pos_ids", "source_ids", "scores"):
            np.testing.assert_array_equal(np.asarray(getattr(rows[name], field)),
                                          np.asarray(getattr(ref_rows[name], field)), err_msg=f"{name}/{field}")
    assert checkpoint_steps(chain["workdir"]) == []
    assert [r["step"] for r in metrics(chain["workdir"]) if "loss" in r] == [10]  # not the dev measurements


@pytest.mark.slow
@link
def test_sigkill_inside_a_checkpoint_save_keeps_the_previous_checkpoint(chain):
    proc = run_cli(chain["args"], "kill_in_save:40")
    line = assert_killed(proc, "kill_in_save")
    assert int(line.split("files_written=")[1].split()[0]) > 0  # killed with the new checkpoint written, uncommitted
    # The rerun started from scratch (no checkpoint) and did not repeat the log line of the killed run,
    # whose log was kept aside.
    assert [r["step"] for r in metrics(chain["workdir"]) if "loss" in r] == [10, 20, 30, 40]
    assert "earlier metrics log was moved to" in proc.stdout
    old = map(json.loads, (chain["workdir"] / "metrics.jsonl.old-1").read_text().splitlines())
    assert [r["step"] for r in old if "loss" in r] == [10]
    assert checkpoint_steps(chain["workdir"]) == [20]
    assert list((chain["workdir"] / "checkpoints").glob("40.orbax-checkpoint-tmp*"))


@pytest.mark.slow
@link
def test_sigterm_saves_a_checkpoint_and_exits_cleanly(chain):
    n = KILL["sigterm"]
    proc = run_cli(chain["args"], f"term_at_step:{n}")
    line = fault_fired(proc, "term_at_step")
    elapsed = time.time() - float(line.split("t=")[1])
    assert_ok(proc)
    assert "resuming from the checkpoint at step 20" in proc.stdout
    assert f"SIGTERM received: saved a checkpoint at step {n + 1}" in proc.stdout
    assert checkpoint_steps(chain["workdir"])[-1] == n + 1
    assert elapsed < SIGTERM_BOUND_S
    print(f"SIGTERM at step {n}: checkpoint at step {n + 1} and exit {elapsed:.1f} s after the signal")
    # No log line out of schedule: the interval's metrics travel in the checkpoint instead.
    assert [r["step"] for r in metrics(chain["workdir"]) if "loss" in r] == [10, 20, 30][: (n + 1) // 10]


@pytest.mark.slow
@link
def test_sigkill_during_the_final_evaluation(chain):
    # A half-written shard as well: the run must notice the truncated shard, name it and rebuild it.
    arr = sorted(_version(chain["cache"]).glob("climb_corpus-train.array_record-*"))[0]
    arr.write_bytes(arr.read_bytes()[: arr.stat().st_size // 2])
    proc = run_cli(chain["args"], "kill_in_eval")
    assert_killed(proc, "kill_in_eval")
    assert f"{arr.name} has" in proc.stderr  # reported: "... has N bytes, the manifest says M"
    assert checkpoint_steps(chain["workdir"])[-1] == 40
    assert not (chain["workdir"] / "eval" / "step_000040.json").exists()


@pytest.mark.slow
@link
def test_rerun_after_every_fault_equals_the_uninterrupted_run(chain, vanilla):
    # And deleted tokenizer files: the cache entry's (detected by its checksum, rebuilt) and the run's copy.
    entry = _version(chain["cache"])
    (entry / "tokenizer" / "tokenizer.json").unlink()
    (chain["workdir"] / "tokenizer" / "tokenizer.json").unlink()
    proc = run_cli(chain["args"])
    assert_ok(proc)
    assert "resuming from the checkpoint at step 40" in proc.stdout
    assert "tokenizer.json is missing" in proc.stderr
    assert (entry / "tokenizer" / "tokenizer.json").exists()
    assert (chain["workdir"] / "tokenizer" / "tokenizer.json").exists()
    assert_same_run(vanilla.reference, chain["workdir"], evaluation=True)
    assert load_run(str(chain["workdir"])).step == 40


# --------------------------------------------------------------------------------------------
# Curricula: a kill with a curriculum event (vocabulary growth, re-scoring, objective switch) between
# the restored checkpoint and the end.


@pytest.fixture(scope="module")
def vocab(cache, tmp_path_factory) -> Kind:
    return _reference(tmp_path_factory, tiny_config(cache, **VOCAB), "vanilla", "smoke", "vocab")


@pytest.mark.slow
def test_second_run_in_a_workdir_is_refused_and_a_killed_run_releases_the_lock(vocab, tmp_path):
    workdir = tmp_path / "run"
    args = vocab.args(workdir)
    first = start_cli(args, f"pause_at_step:{KILL['vocab_pause']}", tmp_path / "first.log")
    try:
        wait_for(tmp_path / "first.log", "FAULT pause_at_step", first)
        second = run_cli(args, timeout=120)
        assert second.returncode == 2, second.stderr[-3000:]
        assert f"another run (pid {first.pid}) is using workdir" in second.stderr
        assert "Traceback" not in second.stderr
    finally:
        first.kill()
        first.wait()
    assert first.returncode == -signal.SIGKILL
    third = run_cli(args)  # the kernel released the killed run's lock
    assert_ok(third)
    assert "resuming from the checkpoint at step 20" in third.stdout
    assert_same_run(vocab.reference, workdir)


@pytest.fixture(scope="module")
def data(cache, tmp_path_factory) -> Kind:
    return _reference(tmp_path_factory, tiny_config(cache, **DATA), "vanilla", "smoke", "data")


@pytest.mark.slow
def test_data_curriculum_sigkill_with_a_rescoring_in_between(data, tmp_path):
    workdir = tmp_path / "run"
    n = KILL["data"]
    assert_killed(run_cli(data.args(workdir), f"kill_at_step:{n}"), "kill_at_step")
    assert checkpoint_steps(workdir) == [20]
    proc = run_cli(data.args(workdir))
    assert_ok(proc)
    assert "resuming from the checkpoint at step 20" in proc.stdout
    assert_same_run(data.reference, workdir)  # includes the re-scored difficulties saved with step 40


@pytest.fixture(scope="module")
def objective(cache, tmp_path_factory) -> Kind:
    c = tiny_config(cache, name="objective_cl", arg="pos_nv_mlm,smoke", **OBJECTIVE)
    return _reference(tmp_path_factory, c, "objective_cl", "pos_nv_mlm,smoke", "objective")


@pytest.mark.slow
def test_objective_curriculum_sigkill_with_a_switch_in_between(objective, tmp_path):
    workdir = tmp_path / "run"
    n = KILL["objective"]
    assert_killed(run_cli(objective.args(workdir), f"kill_at_step:{n}"), "kill_at_step")
    assert checkpoint_steps(workdir) == [4]  # before the switch at step 5
    proc = run_cli(objective.args(workdir))
    assert_ok(proc)
    assert "resuming from the checkpoint at step 4" in proc.stdout
    assert_same_run(objective.reference, workdir)


# --------------------------------------------------------------------------------------------
# Damaged checkpoints, a full disk, a diverging run.


def _copy_run(reference: Path, dest: Path, steps: tuple[int, ...]) -> Path:
    """A copy of a finished run that keeps only the checkpoints of `steps`."""
    shutil.copytree(reference, dest, ignore=shutil.ignore_patterns(".lock"))
    for step in checkpoint_steps(dest):
        if step not in steps:
            shutil.rmtree(dest / "checkpoints" / str(step))
    return dest


@pytest.mark.slow
def test_corrupted_latest_checkpoint_is_skipped_kept_and_retrained(vanilla, tmp_path):
    workdir = _copy_run(vanilla.reference, tmp_path / "run", (20, 40))
    files = sorted((p for p in (workdir / "checkpoints" / "40" / "state").rglob("*") if p.is_file()),
                   key=lambda p: -p.stat().st_size)
    big = files[0]  # the parameters and optimizer state: flip bits, keep the size
    data = bytearray(big.read_bytes())
    rng = np.random.default_rng(SEED)
    for i in rng.integers(len(data) // 4, len(data) - 16, 3):
        data[i] ^= 0x10
    big.write_bytes(bytes(data))
    corrupt = big.read_bytes()
    proc = run_cli(vanilla.args(workdir))
    assert_ok(proc)
    assert "checkpoint at step 40 is unreadable" in proc.stdout
    assert "resuming from the checkpoint at step 20" in proc.stdout
    assert_same_run(vanilla.reference, workdir, evaluation=True)
    # Nothing deleted: the corrupt checkpoint was moved aside, byte for byte.
    kept = [p for p in workdir.rglob(big.name) if "unreadable" in str(p)]
    assert len(kept) == 1 and kept[0].read_bytes() == corrupt


def _can_mount_tmpfs(path: Path) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(path)],
                          capture_output=True).returncode == 0


@pytest.mark.slow
def test_full_disk_while_saving_keeps_the_previous_checkpoint(vanilla, tmp_path):
    """A real full disk: the workdir on a small tmpfs that holds one checkpoint but not two."""
    mnt = tmp_path / "small_disk"
    if not _can_mount_tmpfs(mnt):
        pytest.skip("needs root to mount a small tmpfs; test_full_disk_in_process covers the error path")
    try:
        one = sum(p.stat().st_size for p in (vanilla.reference / "checkpoints" / "20").rglob("*") if p.is_file())
        size_kb = int(one * 1.6) // 1024 + 128
        subprocess.run(["mount", "-o", f"remount,size={size_kb}k", str(mnt)], check=True)
        workdir = mnt / "run"
        # eval.select=last: no best-checkpoint copy beside the regular ones, so the disk's size is in checkpoints.
        proc = run_cli(vanilla.args(workdir) + ["--config.eval.select=last"])
        assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
        assert not our_traceback(proc.stderr), proc.stderr[-3000:]
        assert "Event loop is closed" not in proc.stderr, proc.stderr[-3000:]  # the abandoned writes stay quiet
        err = error_line(proc.stderr)
        assert "No space left on device" in err and "step 40" in err, err
        assert "step 20" in err, err  # says which checkpoint is kept
        assert checkpoint_steps(workdir) == [20]
        good = load_run(str(workdir))  # the half-written step 40 is ignored; step 20 restores intact
        assert good.step == 20
        assert params_equal(good.params, load_run(str(vanilla.reference), step=20).params)
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_full_disk_in_process(cache, tmp_path, monkeypatch):
    """The same, with orbax's metadata writer patched to fail as a full disk does (no root needed)."""
    from orbax.checkpoint._src.handlers import json_checkpoint_handler as jch

    original = jch.JsonCheckpointHandler._save_fn

    async def full_disk(self, x, directory):
        if x.get("step") == 40:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(directory / "metadata"))
        return await original(self, x, directory)

    monkeypatch.setattr(jch.JsonCheckpointHandler, "_save_fn", full_disk)
    c = tiny_config(cache)
    with pytest.raises(CheckpointError, match=r"step 40.*No space left on device.*step 20"):
        train(c, tmp_path / "run")
    monkeypatch.setattr(jch.JsonCheckpointHandler, "_save_fn", original)
    assert checkpoint_steps(tmp_path / "run") == [20]
    assert load_run(str(tmp_path / "run")).step == 20


def test_abandoned_write_callbacks_are_silent_and_other_errors_are_not(monkeypatch):
    """Writes of a failed save finish in tensorstore's threads after orbax closed the save's event
    loop; their callbacks' 'Event loop is closed' errors are dropped, any other callback error is not."""
    import asyncio

    import tensorstore as ts

    from climb_jax.train import checkpoint as ckpt

    seen = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: seen.append(repr(u.exc_value)))
    ckpt._silence_abandoned_writes()
    ckpt._silence_abandoned_writes()  # installing twice filters once
    loop = asyncio.new_event_loop()
    loop.close()

    def finish(callback):
        promise, future = ts.Promise.new()
        future.add_done_callback(callback)
        promise.set_result(0)
        future.result()

    finish(lambda _: loop.call_soon_threadsafe(print))  # what orbax's abandoned writes do
    finish(lambda _: (_ for _ in ()).throw(RuntimeError("Event loop is closed")))  # same text, elsewhere
    finish(lambda _: 1 / 0)
    deadline = time.time() + 10
    while len(seen) < 2 and time.time() < deadline:
        time.sleep(0.01)
    assert seen == ["RuntimeError('Event loop is closed')", "ZeroDivisionError('division by zero')"]


def test_error_line_stands_on_its_own_line(capfd):
    """`error: ...` starts a line of its own even when the output before it ended mid-line (a progress
    bar, a library thread's half-printed traceback)."""
    from climb_jax.errors import print_error

    sys.stderr.write("50%|#####     | 5/10")
    print_error("the disk is full")
    lines = capfd.readouterr().err.splitlines()
    assert lines == ["50%|#####     | 5/10", "error: the disk is full"]


@pytest.mark.slow
def test_nan_loss_names_the_step_and_keeps_the_last_good_checkpoint(vanilla, tmp_path):
    workdir = _copy_run(vanilla.reference, tmp_path / "run", (20,))
    shutil.rmtree(workdir / "eval")
    c = vanilla.config.copy_and_resolve_references()
    c.trainer.lr = 1e6
    c.trainer.max_grad_norm = 0.0  # no clipping
    proc = run_cli(cli_args(c, "vanilla", "smoke", workdir))
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr
    err = proc.stderr.splitlines()[-1]
    assert err.startswith("error: the loss became") and "step 30" in err and "last good checkpoint" in err, err
    assert checkpoint_steps(workdir) == [20]
    kept = load_run(str(workdir))
    assert kept.step == 20 and params_equal(kept.params, load_run(str(vanilla.reference), step=20).params)
