"""The training driver: build a run's parts from its config, then step, log, checkpoint and evaluate.

Running it again in the same workdir resumes from the latest readable checkpoint; since batches are a
pure function of (seed, step, difficulty scores) and masks of (seed, step), the resumed run computes
exactly what an uninterrupted run would have. What happens is decided elsewhere (the compiled step:
`RunSetup.compile`; difficulty scores: `DataCurriculum`; the suites: `Evaluator`; checkpoints:
`Checkpointer`; the log line: `report`); this module orders those parts in time and stops for one reason.
"""

from __future__ import annotations

import collections
import json
import math
import sys
import time

import jax
import numpy as np
from absl import logging
from etils import epath
from ml_collections import ConfigDict

from climb_jax.config import schema
from climb_jax.curriculum.data_curriculum import DataCurriculum, check_corpus_sources
from climb_jax.data.dataset import cache_dir_for, prepare_data
from climb_jax.data.pipeline import InputPipeline
from climb_jax.data.sampler import BatchSampler
from climb_jax.errors import TrainingDiverged
from climb_jax.eval.evaluator import Evaluator, check_suites, evaluates, read_finished
from climb_jax.eval.progress import is_terminal
from climb_jax.parallel import mesh as mesh_lib
from climb_jax.train import report
from climb_jax.train import workdir as workdir_lib
from climb_jax.train.checkpoint import Checkpointer, from_lists, to_lists
from climb_jax.train.compile_count import CompileCounter
from climb_jax.train.selection import CheckpointSelection
from climb_jax.train.setup import TRAIN_STEP_NAME, RunSetup
from climb_jax.train.signals import StopSignals

# JAX dispatches asynchronously: unbounded, the host runs dozens of steps ahead of the device, so a stop
# signal waits for all of them before the save can start and the progress bar counts dispatched steps.
# Waiting for step t - 1 after dispatching step t keeps one step queued (the device never waits for the
# host while the host's work per step is shorter than a step) and at most two to finish after a signal.
DISPATCH_AHEAD = 1


def _diverged(loss: str, step: int) -> TrainingDiverged:
    return TrainingDiverged(f"the loss became {loss} by step {step}; training stopped. The last good checkpoint is "
                            "kept; lower trainer.lr or check the data, then rerun (it resumes from that checkpoint).")


class Trainer:
    """One run in one workdir. Building it prepares the data and every part of the run; `run()` trains
    (or resumes) to `trainer.total_steps` and evaluates."""

    def __init__(self, config: ConfigDict, workdir: str, *, progress: bool = True, stop_at: int | None = None,
                 signals: StopSignals | None = None):
        """`stop_at` ends the run early (with a checkpoint) without changing its schedule: for tests and for
        splitting a run into jobs. `signals`: handlers the caller installed before building the run."""
        parsed = schema.validate(config)
        check_suites(config)  # a missing suite is reported before the data is prepared
        check_corpus_sources(config)  # so is a source order that does not fit the corpus
        mesh_lib.setup_runtime(config)
        c, t = config, config.trainer
        self.config, self.workdir, self.stop_at = config, epath.Path(workdir), stop_at
        self.signals = signals or StopSignals()
        self.primary = jax.process_index() == 0
        self.progress = report.Progress(progress and self.primary, t.total_steps)
        self.counter = CompileCounter()
        self.mesh = mesh_lib.create_mesh(c.mesh)
        mesh_lib.batch_size_per_process(t.batch_size, self.mesh)  # the global batch splits over devices
        device = jax.devices()[0]
        self._say(f"devices: {jax.device_count()} x {device.platform} ({device.device_kind}), mesh "
                  f"{dict(self.mesh.shape)}, processes {jax.process_count()}")
        # Data preparation's bars are carriage-return lines: on a terminal only, never in a log file.
        self.data = prepare_data(c.data, epath.Path(cache_dir_for(c.data, self.workdir)),
                                 progress=progress and self.primary and is_terminal(sys.stdout))
        self.setup = RunSetup.from_config(c, vocab_size=len(self.data.tokenizer), parsed=parsed)
        for line in report.describe(c, self.data, self.setup.model):
            self._say(line)
        self.compiled = self.setup.compile(self.mesh)
        self.curriculum = DataCurriculum.from_config(c, self.data, self.setup.model, self.mesh)
        self.sampler = BatchSampler(
            len(self.data.train), t.batch_size, c.seed, process_index=jax.process_index(),
            process_count=jax.process_count(), scores=self.curriculum.initial_scores(),
            pacing=parsed.data_pacing, total_steps=t.total_steps,
            uniform=c.data_curriculum.uniform_sampling)
        self.checkpointer = Checkpointer(self.workdir / "checkpoints", keep=t.keep_checkpoints,
                                         async_save=t.async_checkpoints)
        self.metrics = workdir_lib.MetricsLog(self.workdir / "metrics.jsonl", enabled=self.primary)
        dev = None if self.data.dev is None or len(self.data.dev) == 0 else np.asarray(self.data.dev.input_ids)
        selecting = c.eval.at_end and c.eval.select == "best_dev_perplexity" and dev is not None
        self.selection = CheckpointSelection(c, self.workdir, enabled=selecting)
        self.evaluator = Evaluator(c, self.setup.model, self.data.tokenizer, dev, self.mesh, self.workdir,
                                   progress=progress and self.primary) if evaluates(c) else None
        self.pending: list = []  # device metrics of the current log interval
        self.host_info: list[dict] = []  # what the host knows of the same batches (rows, sources, pace)
        self.clock = (time.perf_counter(), 0)  # start of the current timing interval: (time, step)

    def _say(self, message: str) -> None:
        logging.info(message)
        if self.primary:
            print(message, flush=True)

    def run(self) -> dict:
        """{step, stop_reason ('done', 'stop_at', 'preempted' or 'interrupted'), state (the final train
        state), eval (the final evaluation, or None), train_step_compiles, best_step}. A diverged loss
        raises `TrainingDiverged`."""
        local = workdir_lib.is_local(self.workdir) and self.primary
        lock = workdir_lib.WorkdirLock(self.workdir).acquire() if local else None
        try:
            with self.counter, self.signals:
                return self._run()
        finally:
            self.checkpointer.close()  # waits for the last (asynchronous) save
            self.metrics.close()
            self.selection.close()
            if lock is not None:
                lock.release()

    def _run(self) -> dict:
        total = self.config.trainer.total_steps
        state, start = self._init_or_restore()
        self._write_run_files()
        final = read_finished(self.evaluator.path(total)) if self.config.eval.at_end else None
        complete = start == total and (final is not None or not self.config.eval.at_end)
        if start and not complete:
            self._say(f"resuming from the checkpoint at step {start}")
        state, step, reason = self._train(state, start)
        self.checkpointer.wait()  # the last save is on disk before anything else can fail or be killed
        evaluation = final
        if reason == "done" and self.config.eval.at_end and final is None:
            evaluation = self._evaluate(self.selection.final_params(state.params, self.compiled.abstract_state.params),
                                        total, extra={"selection": self.selection.record()})
        if complete:
            self._say(report.complete(self.workdir, total, self.metrics.path, self.metrics.read(), evaluation,
                                      self.evaluator.path(total) if evaluation else None))
        elif reason in ("preempted", "interrupted"):
            self._say(report.stopped(reason, step, start))
        return {"step": step, "stop_reason": reason, "state": state, "eval": evaluation,
                "train_step_compiles": self.counter.count(TRAIN_STEP_NAME), "best_step": self.selection.best_step}

    def _stop_reason(self, step: int) -> str | None:
        if step >= self.config.trainer.total_steps:
            return "done"
        return self.signals.reason or ("stop_at" if self.stop_at is not None and step >= self.stop_at else None)

    def _train(self, state, step: int):
        """Steps until there is a stop reason; returns (state, step, reason)."""
        total = self.config.trainer.total_steps
        pipeline = InputPipeline(self.data.train, self.sampler, prefetch=self.config.data.prefetch)
        inflight: collections.deque = collections.deque()  # losses of the steps dispatched, not yet waited for
        self.clock = (time.perf_counter(), step)
        reason = self._stop_reason(step)
        if reason is None:
            self.progress.start(step)
        try:
            while reason is None:
                self.curriculum.maybe_rescore(state.params, step, self.sampler)
                for index, batch in pipeline.iterate(step, self.curriculum.segment_end(step, total)):
                    device_batch = mesh_lib.global_batch({k: batch[k] for k in ("input_ids", "pos_ids")},
                                                         self.compiled.batch_sharding)
                    state, metrics = self.compiled.step(state, device_batch)
                    step = index + 1
                    self.pending.append(metrics)
                    self.host_info.append({k: batch[k] for k in ("source_ids", "index", "data_fraction", "data_pace")})
                    inflight.append(metrics["loss"])
                    if len(inflight) > DISPATCH_AHEAD:
                        inflight.popleft().block_until_ready()
                        self.progress.computed(step - len(inflight))
                    reason = self._after_step(state, step)
                    if reason is not None:
                        break
        finally:
            pipeline.close()
            self.progress.close()
        return state, step, reason

    def _after_step(self, state, step: int) -> str | None:
        """Logs, measures dev perplexity, saves and evaluates as scheduled at `step`; the stop reason."""
        t = self.config.trainer
        if step % t.log_every == 0 or step == t.total_steps:
            self._log(step)
        dev = self.selection.measure(step, state.params, self.evaluator)
        if dev is not None:
            self._say(f"step {step}: dev pseudo-perplexity {dev['mean']:.2f} (std {dev['std']:.2f})")
            self.metrics.write_eval(step, {"dev_perplexity": dev})
        reason = self._stop_reason(step)
        if step % t.checkpoint_every == 0 or reason is not None:
            self._save(state, step)
        if reason is None and t.eval_every and step % t.eval_every == 0:
            self._evaluate(state.params, step)
            self.clock = (time.perf_counter(), step)
        return reason

    def _init_or_restore(self):
        found = self.checkpointer.restore_latest(self.compiled.abstract_state)
        if found is None:
            old = self.metrics.set_aside()  # lines of an earlier attempt killed before its first checkpoint
            if old:
                self._say(f"no checkpoint to resume from: the earlier metrics log was moved to {old}")
            return self.compiled.init(), 0
        state, meta, host, step = found
        self.pending = from_lists(meta.get("pending_metrics", []))
        self.host_info = from_lists(meta.get("pending_host", []))
        self.selection.history = list(meta.get("selection", []))
        self.sampler.load_state_dict({"meta": meta.get("sampler", {}), "scores": (host or {}).get("scores")})
        self.metrics.truncate_after(step)
        return state, step

    def _write_run_files(self) -> None:
        """config.json (with the command line and code version) and the run's own tokenizer copy, for
        evaluation and export without the data cache. Written only once the checkpoints are known to fit
        this config, so a rerun with mistaken settings never overwrites the record of the run it refused."""
        if self.primary:
            record = dict(json.loads(self.config.to_json_best_effort()), provenance=workdir_lib.provenance())
            workdir_lib.write_json(self.workdir / "config.json", record)
            self.data.tokenizer.save_pretrained(str(self.workdir / "tokenizer"))

    def _save(self, state, step: int) -> None:
        """Saves the state with the sampler and the not-yet-logged metrics of the current log interval, so
        a run resumed between two log steps writes the same log line as an uninterrupted one."""
        if self.pending and not math.isfinite(loss := float(jax.device_get(self.pending[-1]["loss"]))):
            raise _diverged(f"{loss}", step)  # never save a state whose last loss was not looked at
        sampler = self.sampler.state_dict()
        rescored = self.curriculum.rescoring and sampler.get("scores") is not None
        meta = {"step": step, "sampler": sampler["meta"], "data_fingerprint": self.data.fingerprint,
                "pending_metrics": to_lists(jax.device_get(self.pending)), "pending_host": to_lists(self.host_info),
                "selection": self.selection.history}
        self.checkpointer.save(step, state, meta, {"scores": sampler["scores"]} if rescored else None)

    def _log(self, step: int) -> None:
        c = self.config
        rec = report.log_record(step, jax.device_get(self.pending), self.host_info, setup=self.setup,
                                sampler=self.sampler, sources=self.data.sources,
                                tokens_per_step=c.trainer.batch_size * c.data.seq_len,
                                seconds=time.perf_counter() - self.clock[0], steps=step - self.clock[1])
        if not math.isfinite(rec["loss"]) or not math.isfinite(rec["grad_norm"]):
            raise _diverged(f"{rec['loss']} (gradient norm {rec['grad_norm']})", step)
        rec["train_step_compiles"] = self.counter.count(TRAIN_STEP_NAME)
        self.metrics.write(rec)
        self.progress.log(rec)
        self.pending, self.host_info = [], []
        self.clock = (time.perf_counter(), step)

    def _evaluate(self, params, step: int, extra: dict | None = None) -> dict:
        result = self.evaluator.evaluate(params, step, extra=extra)
        self.metrics.write_eval(step, result)
        return result


def train_and_evaluate(config: ConfigDict, workdir: str, *, progress: bool = True,
                       stop_at: int | None = None) -> dict:
    """The command line's entry: the stop signals are handled from before the data is prepared."""
    with StopSignals() as signals:
        return Trainer(config, workdir, progress=progress, stop_at=stop_at, signals=signals).run()
