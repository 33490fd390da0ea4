"""The run directory's logs: TensorBoard events beside metrics.jsonl (the same numbers, evaluation
results too, earlier attempts' steps purged on resume, no torch or TensorFlow loaded), and provenance."""

from __future__ import annotations

import json
import os
import shlex
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from climb_jax.train.workdir import MetricsLog, provenance
from tests.conftest import REPO

pytest.importorskip("tensorboardX")


def read_events(folder: Path) -> list[list]:
    """The events of every event file in `folder` (in file-name order, i.e. creation order): one list per
    file of (step, tag or session status, value). Reads the TFRecord framing directly."""
    from tensorboardX.proto import event_pb2

    files = []
    for path in sorted(folder.glob("events.out.tfevents.*")):
        data, pos, events = path.read_bytes(), 0, []
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos:pos + 8])
            event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
            pos += 12 + length + 4
            if event.HasField("session_log"):
                events.append((event.step, "session_log", event.session_log.status))
            for v in event.summary.value:
                events.append((event.step, v.tag, round(v.simple_value, 6)))
        files.append(events)
    return files


def test_records_and_evaluations_become_tensorboard_scalars(tmp_path):
    log = MetricsLog(tmp_path / "metrics.jsonl")
    records = [
        {"step": 10, "loss": 5.5, "vocab_pace": 0.25, "learning_rates": {"encoder": 1e-3, "pos_nv_head": 0.0},
         "source_mix": {"aochildes": 0.75, "switchboard": 0.25}, "note": "text is skipped"},
        {"step": 20, "loss": 4.5, "vocab_pace": 0.5, "learning_rates": {"encoder": 2e-3, "pos_nv_head": 0.0},
         "source_mix": {"aochildes": 0.5, "switchboard": 0.5}, "note": "text is skipped"},
    ]
    for r in records:
        log.write(r)
    log.write_eval(20, {"blimp": {"overall": 0.5625, "fields": {"syntax": 0.5}}, "suite": "embedded"})
    log.close()
    assert [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()] == records
    (events,) = read_events(tmp_path)
    scalars = {(step, tag): value for step, tag, value in events if tag != "session_log"}
    assert scalars == {
        (10, "train/loss"): 5.5, (10, "train/vocab_pace"): 0.25, (10, "learning_rates/encoder"): 0.001,
        (10, "learning_rates/pos_nv_head"): 0.0, (10, "source_mix/aochildes"): 0.75,
        (10, "source_mix/switchboard"): 0.25,
        (20, "train/loss"): 4.5, (20, "train/vocab_pace"): 0.5, (20, "learning_rates/encoder"): 0.002,
        (20, "learning_rates/pos_nv_head"): 0.0, (20, "source_mix/aochildes"): 0.5,
        (20, "source_mix/switchboard"): 0.5,
        (20, "eval/blimp/overall"): 0.5625, (20, "eval/blimp/fields/syntax"): 0.5,
    }


def test_a_resumed_run_purges_the_earlier_attempts_later_steps(tmp_path):
    first = MetricsLog(tmp_path / "metrics.jsonl")
    for step in (10, 20, 30):  # killed after logging 30, last checkpoint at 20
        first.write({"step": step, "loss": float(step)})
    first.close()
    resumed = MetricsLog(tmp_path / "metrics.jsonl")
    resumed.truncate_after(20)
    resumed.write({"step": 30, "loss": 3.0})
    resumed.close()
    assert [json.loads(l)["step"] for l in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [10, 20, 30]
    old, new = read_events(tmp_path)
    assert [e for e in old if e[1] == "train/loss"] == [(10, "train/loss", 10.0), (20, "train/loss", 20.0),
                                                         (30, "train/loss", 30.0)]
    # TensorBoard drops every earlier event at or after a SessionLog START's step (1 = START).
    assert new[0] == (21, "session_log", 1)
    assert [e for e in new if e[1] == "train/loss"] == [(30, "train/loss", 3.0)]


def test_a_restart_from_step_0_hides_the_killed_attempts_events(tmp_path):
    killed = MetricsLog(tmp_path / "metrics.jsonl")
    killed.write({"step": 10, "loss": 9.0})  # killed before its first checkpoint
    killed.close()
    again = MetricsLog(tmp_path / "metrics.jsonl")
    assert again.set_aside() == str(tmp_path / "metrics.jsonl.old-1")
    again.write({"step": 10, "loss": 8.0})
    again.close()
    old, new = read_events(tmp_path)
    assert [e for e in old if e[1] == "train/loss"] == [(10, "train/loss", 9.0)]
    assert new[0] == (0, "session_log", 1) and [e for e in new if e[1] == "train/loss"] == [(10, "train/loss", 8.0)]


def test_disabled_and_remote_logs_write_no_events(tmp_path):
    log = MetricsLog(tmp_path / "metrics.jsonl", enabled=False)
    log.write({"step": 1, "loss": 1.0})
    log.write_eval(1, {"blimp": {"overall": 0.5}})
    log.close()
    assert list(tmp_path.iterdir()) == []
    assert not MetricsLog("gs://bucket/run/metrics.jsonl").tensorboard


def test_the_event_writer_loads_neither_torch_nor_tensorflow(tmp_path):
    code = ("import sys\nfrom climb_jax.train.workdir import MetricsLog\n"
            f"log = MetricsLog({str(tmp_path / 'metrics.jsonl')!r})\nlog.write({{'step': 1, 'loss': 1.0}})\n"
            "log.close()\nprint(sorted(m for m in ('torch', 'tensorflow') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"
    assert len(read_events(tmp_path)) == 1


def test_provenance_names_the_command_and_the_commit():
    p = provenance()
    assert p["cwd"] == os.getcwd()
    words = shlex.split(p["command"])
    assert words[0] == "python" and words[len(words) - len(sys.argv) + 1:] == sys.argv[1:]
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode == 0:
        assert p["git_commit"] == head.stdout.strip() and isinstance(p["git_dirty"], bool)
    else:
        assert p["git_commit"] is None and p["git_dirty"] is None
    json.dumps(p)  # goes into config.json as it is
