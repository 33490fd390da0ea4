"""The training command line with one injected fault, for the fault-injection tests.

    CLIMB_FAULT=kill_at_step:17 python -m tests.fault_driver --config=... --workdir=...

runs exactly `python -m climb_jax.main` with the same arguments, after installing a hook that injects
the fault named by `$CLIMB_FAULT` at a precise, reproducible point. The hooks wrap functions the
training run calls anyway; none changes what the run computes. Before a fault fires, one line
`FAULT <name> <detail>` goes to stderr, so a test can tell a fault that fired from a run that ended
for another reason.

Faults (`name:argument`):
  kill_at_step:N       SIGKILL when the loop is about to run step N+1 (steps 1..N done, their log line and
                       checkpoint written).
  term_at_step:N       SIGTERM (what a preempted VM receives) at the same point; the run handles it.
  pause_at_step:N      stop at the same point and sleep until killed (holds the workdir lock).
  kill_in_save:N       SIGKILL inside the checkpoint save of step N, after every file is written and
                       before orbax's commit (the rename of the temporary directory).
  kill_in_data_prep:S  SIGKILL inside the data preparation, at stage S: `encode` (token parts written, no
                       arrays), `manifest` (arrays written, no manifest) or `publish` (complete but not
                       yet renamed into place).
  kill_in_eval:0       SIGKILL in the middle of an evaluation (BLiMP scored, perplexity not yet).
  term_in_eval:0       SIGTERM at the same point.
"""

from __future__ import annotations

import functools
import os
import signal
import sys
import time


def _fire(name: str, detail: str, sig: int | None = signal.SIGKILL) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    # One write to the descriptor, on a line of its own: a library thread's output cannot split it.
    os.write(2, f"\nFAULT {name} {detail} t={time.time():.3f}\n".encode())
    if sig is not None:
        os.kill(os.getpid(), sig)


def _at_step(name: str, target: int) -> None:
    """Wraps the input pipeline: every step's batch passes through it, in order, on the main thread."""
    from climb_jax.data import pipeline

    original = pipeline.InputPipeline.iterate

    @functools.wraps(original)
    def iterate(self, start, stop):
        for step, batch in original(self, start, stop):
            if step == target:  # `step` steps are done; this batch is step `step + 1`
                if name == "pause_at_step":
                    _fire(name, f"step={target} pid={os.getpid()}", sig=None)
                    while True:
                        time.sleep(1)
                _fire(name, f"step={target}", signal.SIGTERM if name == "term_at_step" else signal.SIGKILL)
            yield step, batch

    pipeline.InputPipeline.iterate = iterate


def _in_save(target: int) -> None:
    from orbax.checkpoint._src.path import atomicity

    for cls in (atomicity.AtomicRenameTemporaryPath, atomicity.CommitFileTemporaryPath):
        original = cls.finalize

        async def finalize(self, *args, _original=original, **kwargs):
            final = self.get_final()
            if final.name == str(target):
                written = sum(len(files) for _, _, files in os.walk(str(self.get())))
                _fire("kill_in_save", f"step={target} files_written={written} tmp={self.get().name}")
            return await _original(self, *args, **kwargs)

        cls.finalize = finalize


def _in_data_prep(stage: str) -> None:
    from climb_jax.data import build, tfds_writer

    targets = {"encode": (build, "assemble"), "manifest": (tfds_writer, "write_marker"),
               "publish": (tfds_writer, "publish")}
    if stage not in targets:
        raise SystemExit(f"kill_in_data_prep: unknown stage '{stage}'; use one of {sorted(targets)}")
    module, attr = targets[stage]
    original = getattr(module, attr)

    @functools.wraps(original)
    def hooked(*args, **kwargs):
        _fire("kill_in_data_prep", f"stage={stage}")
        return original(*args, **kwargs)

    setattr(module, attr, hooked)


def _in_eval(sig: int) -> None:
    """Fires when the final evaluation has scored BLiMP and the dev rows, before it writes anything."""
    from climb_jax.eval import perplexity

    original = perplexity.perplexity_summary

    @functools.wraps(original)
    def hooked(*args, **kwargs):
        _fire("kill_in_eval" if sig == signal.SIGKILL else "term_in_eval", "phase=perplexity", sig)
        return original(*args, **kwargs)

    perplexity.perplexity_summary = hooked


def install(spec: str) -> None:
    name, _, arg = spec.partition(":")
    if name in ("kill_at_step", "term_at_step", "pause_at_step"):
        _at_step(name, int(arg))
    elif name == "kill_in_save":
        _in_save(int(arg))
    elif name == "kill_in_data_prep":
        _in_data_prep(arg)
    elif name == "kill_in_eval":
        _in_eval(signal.SIGKILL)
    elif name == "term_in_eval":
        _in_eval(signal.SIGTERM)
    elif name:
        raise SystemExit(f"unknown fault '{spec}'")


if __name__ == "__main__":
    install(os.environ.get("CLIMB_FAULT", ""))
    from climb_jax import main

    sys.argv[0] = "climb_jax.main"
    main.main()
