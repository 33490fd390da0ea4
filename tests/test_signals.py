"""Stopping a run from outside, through the real command line in a subprocess: Ctrl-C (SIGINT) and
preemption (SIGTERM) save a checkpoint, say how to resume and exit (130 for Ctrl-C, 0 for SIGTERM); a
second Ctrl-C ends the process at once; a Ctrl-C before the first step (during the first compile)
exits cleanly; a rerun of a finished run says it is complete instead of resuming. Never a traceback.

The child gets the default SIGINT disposition (Python's KeyboardInterrupt handler), as in a terminal,
even when the test runner itself was started with SIGINT ignored. The seconds from each signal to
the exit are printed (`-s` shows them), never asserted.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import REPO

TINY = ["--config.model.num_layers=2", "--config.model.hidden_size=64", "--config.model.num_heads=4",
        "--config.model.intermediate_size=128", "--config.data.vocab_size=600", "--config.data.seq_len=32",
        "--config.data.max_train_words=30000", "--config.data.max_eval_words=3000"]
LIVENESS_S = 300  # a bound for a hung child, not a measurement
pytestmark = pytest.mark.slow  # seven command-line runs, about 20 s each on two cores


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("signals_cache")


class Run:
    """`python -m <module>` (the command line, or the fault driver around it) in a subprocess; its
    output is read line by line as it comes."""

    def __init__(self, workdir: Path, cache: Path, *overrides: str, fault: str | None = None):
        args = [sys.executable, "-m", "tests.fault_driver" if fault else "climb_jax.main",
                "--config=configs/vanilla.py:smoke", *TINY, f"--config.data.cache_dir={cache}",
                "--config.eval.at_end=false", "--plot=false", f"--workdir={workdir}", *overrides]
        env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1",
                   CLIMB_FAULT=fault or "")
        self.proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        self.streams: dict[str, list[str]] = {"out": [], "err": []}
        self._seen = threading.Condition()
        self._readers = [threading.Thread(target=self._read, args=(name, stream), daemon=True)
                         for name, stream in (("out", self.proc.stdout), ("err", self.proc.stderr))]
        for reader in self._readers:
            reader.start()

    def _read(self, name: str, stream) -> None:
        for line in stream:
            with self._seen:
                self.streams[name].append(line)
                self._seen.notify_all()

    def wait_for(self, pattern: str, stream: str = "out") -> None:
        def found():
            return any(re.search(pattern, l) for l in self.streams[stream])

        with self._seen:
            self._seen.wait_for(lambda: found() or self.proc.poll() is not None, timeout=LIVENESS_S)
        assert found(), (pattern, self.out, self.err[-3000:])

    def send(self, sig: int) -> float:
        self.proc.send_signal(sig)
        return time.monotonic()

    def finish(self) -> int:
        rc = self.proc.wait(timeout=LIVENESS_S)
        for reader in self._readers:
            reader.join(timeout=10)
        return rc

    @property
    def out(self) -> str:
        return "".join(self.streams["out"])

    @property
    def err(self) -> str:
        return "".join(self.streams["err"])


def checkpoints(workdir: Path) -> list[int]:
    d = workdir / "checkpoints"
    return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit()) if d.exists() else []


def test_ctrl_c_saves_says_how_to_resume_and_exits_130_then_a_rerun_completes(cache, tmp_path):
    workdir = tmp_path / "run"
    run = Run(workdir, cache, "--config.trainer.total_steps=120", "--config.trainer.log_every=5")
    run.wait_for(r"^step 5/120")  # one plain line per log step: stdout is a pipe, not a terminal
    sent = run.send(signal.SIGINT)
    rc = run.finish()
    print(f"SIGINT to exit: {time.monotonic() - sent:.2f} s")
    assert rc == 130, (rc, run.out, run.err[-3000:])
    assert "Traceback" not in run.err, run.err[-3000:]
    saved = re.search(r"SIGINT received: saved a checkpoint at step (\d+); rerun the same command to resume",
                      run.out)
    assert saved, run.out
    step = int(saved.group(1))
    assert 5 <= step < 120 and checkpoints(workdir)[-1] == step

    rerun = Run(workdir, cache, "--config.trainer.total_steps=120", "--config.trainer.log_every=5")
    assert rerun.finish() == 0, rerun.err[-3000:]
    assert f"resuming from the checkpoint at step {step}" in rerun.out
    assert checkpoints(workdir)[-1] == 120

    again = Run(workdir, cache, "--config.trainer.total_steps=120", "--config.trainer.log_every=5")
    assert again.finish() == 0, again.err[-3000:]
    assert "resuming" not in again.out
    complete = re.search(r"the run in \S+ is complete \(120 steps\): nothing to resume\. Results: (\S+); final "
                         r"loss ([0-9.]+)", again.out)
    assert complete and Path(complete.group(1)) == workdir / "metrics.jsonl", again.out
    last = json.loads((workdir / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["step"] == 120 and f"{last['loss']:.4f}" == complete.group(2)


def test_sigterm_saves_and_exits_cleanly(cache, tmp_path):
    workdir = tmp_path / "run"
    run = Run(workdir, cache, "--config.trainer.total_steps=2000", "--config.trainer.log_every=5")
    run.wait_for(r"^step 5/2000")
    sent = run.send(signal.SIGTERM)
    rc = run.finish()
    print(f"SIGTERM to exit: {time.monotonic() - sent:.2f} s")
    assert rc == 0 and "Traceback" not in run.err, (rc, run.err[-3000:])
    saved = re.search(r"SIGTERM received: saved a checkpoint at step (\d+); rerun the same command to resume", run.out)
    assert saved and checkpoints(workdir) == [int(saved.group(1))], (run.out, checkpoints(workdir))


def test_second_ctrl_c_exits_at_once(cache, tmp_path):
    # The fault driver holds the run before step 6 in a sleep it never leaves by itself: after the first
    # Ctrl-C the run would wait there for ever, so only the second one can end it.
    run = Run(tmp_path / "run", cache, "--config.trainer.total_steps=2000", fault="pause_at_step:5")
    run.wait_for(r"^FAULT pause_at_step", stream="err")
    run.send(signal.SIGINT)
    run.wait_for(r"SIGINT received: stopping after this step")
    sent = run.send(signal.SIGINT)
    rc = run.finish()
    print(f"second SIGINT to exit: {time.monotonic() - sent:.2f} s")
    assert rc == -signal.SIGINT, (rc, run.err[-3000:])
    assert "Traceback" not in run.err and "Fatal Python error" not in run.err, run.err[-3000:]


def test_ctrl_c_before_the_first_step_exits_cleanly(cache, tmp_path):
    workdir = tmp_path / "run"
    run = Run(workdir, cache, "--config.trainer.total_steps=2000")
    run.wait_for(r"^model: ")  # the state's initialisation and the step's first compile come next
    run.send(signal.SIGINT)
    rc = run.finish()
    assert rc == 130, (rc, run.out, run.err[-3000:])
    assert "Traceback" not in run.err and "Fatal Python error" not in run.err, run.err[-3000:]
    assert re.search(r"SIGINT received: (no step was trained|saved a checkpoint at step \d+); rerun the same "
                     r"command to resume", run.out), run.out


def _started_into_a_pipe(workdir: Path, cache: Path, *overrides: str) -> subprocess.Popen:
    """The command line as in `python -m climb_jax.main ... --noprogress 2>&1 | tee log`: stdout and stderr
    in one pipe, read until the first log line (a plain line: `--noprogress` replaces the bar, never the
    lines); then the reader exits (as tee does on the same Ctrl-C)."""
    args = [sys.executable, "-m", "climb_jax.main", "--config=configs/vanilla.py:smoke", *TINY,
            f"--config.data.cache_dir={cache}", "--config.eval.at_end=false", "--plot=false", "--noprogress",
            f"--workdir={workdir}", *overrides]
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
    env.pop("PYTHONUNBUFFERED", None)  # block-buffered, as into a real pipe: text is pending at the signal
    proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if line.startswith("step 5/"):
            break
    proc.stdout.close()  # nobody reads the pipe any more
    assert seen and seen[-1].startswith("step 5/"), "".join(seen)
    return proc


@pytest.mark.parametrize("sig, status", [(signal.SIGINT, 130), (signal.SIGTERM, 0)])
def test_a_stop_signal_saves_even_when_nobody_reads_the_output(cache, tmp_path, sig, status):
    """The reader of the pipe is gone when the signal comes: every later write fails, yet the run saves a
    checkpoint, releases the workdir and exits with the signal's status; a rerun resumes from that
    checkpoint and logs exactly what an uninterrupted run logs."""
    steps = ["--config.trainer.total_steps=40", "--config.trainer.log_every=5"]
    workdir = tmp_path / "run"
    proc = _started_into_a_pipe(workdir, cache, *steps)
    proc.send_signal(sig)
    assert proc.wait(timeout=LIVENESS_S) == status
    saved = checkpoints(workdir)
    assert saved and 5 <= saved[-1] < 40, saved
    assert not (workdir / ".lock").exists()  # released: the next run may use the workdir
    if sig == signal.SIGTERM:
        return
    rerun = Run(workdir, cache, *steps)
    assert rerun.finish() == 0, rerun.err[-3000:]
    assert f"resuming from the checkpoint at step {saved[-1]}" in rerun.out
    reference = Run(tmp_path / "reference", cache, *steps)
    assert reference.finish() == 0, reference.err[-3000:]
    from tests.helpers import read_metrics

    assert read_metrics(workdir) == read_metrics(tmp_path / "reference")
