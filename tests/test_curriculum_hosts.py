"""Every process of a multi-host run computes the same curriculum, and a run whose processes do not stops."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import REPO
from tests.test_scale_out import _free_port


@pytest.mark.slow
def test_processes_with_different_curricula_stop_at_the_first_log_step(tmp_path):
    """Two processes of one run on localhost, the second forced to set another vocabulary pace: the step
    runs (the curriculum is only an argument), and at the first log step both stop with one error that
    names the step and the two checksums."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO), CLIMB_TEST_NUM_PROCESSES="2",
               CLIMB_TEST_COORDINATOR=f"localhost:{_free_port()}", CLIMB_TEST_RUN_TAG="skew",
               CLIMB_TEST_SKEW_CURRICULUM="1")
    env.pop("XLA_FLAGS", None)
    env.pop("JAX_NUM_CPU_DEVICES", None)
    procs = [subprocess.Popen([sys.executable, "-m", "tests.equivalence_driver", str(tmp_path / "cache"),
                               str(tmp_path), "vanilla"], cwd=REPO, env=dict(env, CLIMB_TEST_PROCESS_ID=str(i)),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    for p in procs:
        _, stderr = p.communicate(timeout=600)
        assert p.returncode != 0, stderr[-2000:]
        line = [l for l in stderr.splitlines() if "different curricula" in l]
        assert line, stderr[-3000:]
        assert "the processes computed different curricula at step 10" in line[-1]
        digests = line[-1].split("checksums by process: ")[1].split(")")[0].split(", ")
        assert len(digests) == 2 and digests[0] != digests[1]
