"""The training driver: build a run's parts from its config, then step, log, checkpoint and evaluate.

Running it again in the same workdir resumes from the latest readable checkpoint; since batches are a
pure function of (seed, step, difficulty scores) and masks of (seed, step), the resumed run computes
exactly what an uninterrupted run would have. What happens is decided elsewhere (the compiled step:
`RunSetup.compile`; difficulty scores: `DataCurriculum`; the suites: `Evaluator`; checkpoints:
`Checkpointer`; the log line: `report`); this module orders those parts in time and stops for one reason.
"""

from __future__ import annotations

import collections
import math
import sys
import time

import jax
import numpy as np
from absl import logging
from etils import epath
from ml_collections import ConfigDict

from climb_jax.config import schema
from climb_jax.curriculum import source as source_lib
from climb_jax.curriculum import word_list
from climb_jax.curriculum.data_curriculum import DataCurriculum, check_corpus_sources
from climb_jax.data.dataset import cache_dir_for, prepare_data
from climb_jax.data.hosts import check_hosts_agree
from climb_jax.data.pipeline import InputPipeline
from climb_jax.data.sampler import BatchSampler
from climb_jax.errors import TrainingDiverged
from climb_jax.eval.evaluator import Evaluator, check_suites, evaluates, read_finished
from climb_jax.eval.progress import Interrupted, in_training, is_terminal
from climb_jax.parallel import mesh as mesh_lib
from climb_jax.train import report
from climb_jax.train import workdir as workdir_lib
from climb_jax.train.checkpoint import Checkpointer, from_lists, to_lists
from climb_jax.train.compile_count import CompileCounter
from climb_jax.train.estimate import CostEstimate
from climb_jax.train.selection import CheckpointSelection, explain
from climb_jax.train.setup import TRAIN_STEP_NAME, RunSetup
from climb_jax.train.signals import StopSignals

# JAX dispatches asynchronously: unbounded, the host runs dozens of steps ahead of the device, so a stop
# signal waits for all of them before the save can start and the progress bar counts dispatched steps.
# Waiting for step t - 1 after dispatching step t keeps one step queued (the device never waits for the
# host while the host's work per step is shorter than a step) and at most two to finish after a signal.
DISPATCH_AHEAD = 1
# Written when a run has trained every step and written its final evaluation: the one file a watcher
# (launch/watch.py, which relaunches preempted runs) reads to know it may stop.
DONE_FILE = "done.json"


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
        source_lib.check(config)  # and an adaptive curriculum with nothing to drive
        words = word_list.from_config(config)  # a bad word list, before the data is prepared
        mesh_lib.setup_runtime(config)
        c, t = config, config.trainer
        self.config, self.workdir, self.stop_at = config, epath.Path(workdir), stop_at
        self.signals = signals or StopSignals()
        self.primary = jax.process_index() == 0
        self.progress = report.Progress(self.primary, t.total_steps, bar=progress)
        self.counter = CompileCounter()
        self.mesh = mesh_lib.create_mesh(c.mesh)
        mesh_lib.batch_size_per_process(t.batch_size, self.mesh)  # the global batch splits over devices
        device = jax.devices()[0]
        self._say(f"devices: {jax.device_count()} x {device.platform} ({device.device_kind}), mesh "
                  f"{dict(self.mesh.shape)}, processes {jax.process_count()}")
        # Data preparation's bars are carriage-return lines: on a terminal only, never in a log file.
        self.data = prepare_data(c.data, epath.Path(cache_dir_for(c.data, self.workdir)),
                                 progress=progress and self.primary and is_terminal(sys.stdout),
                                 curriculum=c.data_curriculum)
        check_hosts_agree(self.data.fingerprint)  # every process opened the same prepared dataset
        ranks = None if words is None else word_list.ranks_for(words, self.data.tokenizer, self.data.token_counts,
                                                                 config.vocab_curriculum.word_list)
        self.setup = RunSetup.from_config(c, vocab_size=len(self.data.tokenizer), parsed=parsed, ranks=ranks)
        for line in report.describe(c, self.data, self.setup.model):
            self._say(line)
        self.compiled = self.setup.compile(self.mesh)
        stop = lambda: self.signals.reason  # noqa: E731 - evaluations yield to a stop signal between batches
        self.curriculum = DataCurriculum.from_config(c, self.data, self.setup.model, self.mesh,
                                                     progress=in_training(progress, stop, self.primary))
        self.sampler = BatchSampler(
            len(self.data.train), t.batch_size, c.seed, process_index=jax.process_index(),
            process_count=jax.process_count(), scores=self.curriculum.initial_scores(),
            pacing=parsed.data_pacing, total_steps=t.total_steps,
            uniform=c.data_curriculum.uniform_sampling)
        self.source = self.compiled.source  # each step's curriculum (schedule or adaptive)
        if self.source.drives("data"):
            self.sampler.pace_override = self.source.data_pace
        self.checkpointer = Checkpointer(self.workdir / "checkpoints", keep=t.keep_checkpoints,
                                         async_save=t.async_checkpoints)
        self.metrics = workdir_lib.MetricsLog(self.workdir / "metrics.jsonl", enabled=self.primary)
        dev = None if self.data.dev is None or len(self.data.dev) == 0 else np.asarray(self.data.dev.input_ids)
        selecting = c.eval.at_end and c.eval.select == "best_dev_perplexity" and dev is not None
        self.selection = CheckpointSelection(c, self.workdir, enabled=selecting)
        self.evaluator = Evaluator(c, self.setup.model, self.data.tokenizer, dev, self.mesh, self.workdir,
                                   progress=progress and self.primary, stop=stop) if evaluates(c) else None
        self.estimate = CostEstimate(c, evaluator=self.evaluator, selection=self.selection, curriculum=self.curriculum,
                                     train_ids=self.data.train.input_ids, say=self._say)
        self.applied = None  # the curriculum of the last step dispatched
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
        check_hosts_agree(self.data.fingerprint, self.sampler.ordering_id())  # before step 0, or a resumed one
        self._write_run_files()
        final = read_finished(self.evaluator.path(total)) if self.config.eval.at_end else None
        complete = start == total and (final is not None or not self.config.eval.at_end)
        if start and not complete:
            self._say(f"resuming from the checkpoint at step {start}")
        state, step, reason = self._train(state, start)
        self.checkpointer.wait()  # the last save is on disk before anything else can fail or be killed
        evaluation = final
        if reason == "done" and self.config.eval.at_end and final is None:
            try:
                evaluation = self._evaluate(self.selection.final_params(state.params,
                                                                        self.compiled.abstract_state.params),
                                            total, extra={"selection": self.selection.record()})
            except Interrupted as stopped:  # the checkpoint at `total` is saved: a rerun evaluates
                reason = stopped.reason
            if explain((evaluation or {}).get("selection")):  # not the last checkpoint: say which, and why
                self._say(explain(evaluation["selection"]))
        if reason == "done" and self.primary:  # last: nothing is left to do (launch/watch.py waits for it)
            written = str(self.evaluator.path(total)) if evaluation else None
            workdir_lib.write_json(self.workdir / DONE_FILE, {"step": total, "eval": written})
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
        pipeline = InputPipeline(self.data.train, self.sampler, prefetch=self.config.data.prefetch)
        inflight: collections.deque = collections.deque()  # losses of the steps dispatched, not yet waited for
        self.clock, first = (time.perf_counter(), step), step
        reason = self._stop_reason(step)
        if step and reason in (None, "done"):  # resumed after a stop signal during a measurement at `step`
            reason = self._scheduled_evaluations(state, step, saved=True) or reason
        if reason is None:
            self.progress.start(step)
        try:
            while reason is None:
                try:
                    self.curriculum.maybe_rescore(state.params, step, self.sampler)
                except Interrupted as stopped:  # saved before the re-scoring (unless it is); a rerun re-scores
                    reason = stopped.reason
                    if step != first and step % self.config.trainer.checkpoint_every:
                        self._save(state, step)
                    break
                for index, batch in pipeline.iterate(step, self._segment_end(step)):
                    device_batch = mesh_lib.global_batch({k: batch[k] for k in ("input_ids", "pos_ids", "score")},
                                                         self.compiled.batch_sharding)
                    self.applied = self.source.at(index, batch["threshold"])
                    state, metrics = self.compiled.step(state, device_batch, self.applied)
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

    def _segment_end(self, step: int) -> int:
        """Where the pipeline's prefetching must pause: at a re-scoring, and, when the host drives the
        data pace, at the next log step (the pace may change there, and batches depend on it)."""
        t = self.config.trainer
        end = self.curriculum.segment_end(step, t.total_steps)
        if self.source.drives("data"):
            end = min(end, (step // t.log_every + 1) * t.log_every)
        return end

    def _after_step(self, state, step: int) -> str | None:
        """Logs, measures dev perplexity, saves and evaluates as scheduled at `step`; the stop reason."""
        t = self.config.trainer
        if step % t.log_every == 0 or step == t.total_steps:
            self._log(step)
        self.estimate.after_step(step, state.params)
        return self._scheduled_evaluations(state, step, saved=False)

    def _scheduled_evaluations(self, state, step: int, saved: bool) -> str | None:
        """The dev measurement, the save and the evaluation due at `step`; the stop reason. A stop signal
        during a measurement ends it between two batches: the state is saved (`saved`: it already is) and
        the run resumed at `step` measures again here, so it computes what an uninterrupted run would."""
        t = self.config.trainer
        reason = None
        try:
            dev = self.selection.measure(step, state.params, self.evaluator)  # None if not due or already done
            if dev is not None:
                self._say(report.dev_measured(step, dev))
                self.metrics.write_eval(step, {"dev_perplexity": dev})
                self.source.observe(step, "dev_loss", dev["mean"])
                self.clock = (time.perf_counter(), step)
            reason = self._stop_reason(step)
            if not saved and (step % t.checkpoint_every == 0 or reason is not None):
                self._save(state, step)
                saved = True
            if reason is None and t.eval_every and step % t.eval_every == 0 and not self.evaluator.path(step).exists():
                self._evaluate(state.params, step)
                self.clock = (time.perf_counter(), step)
        except Interrupted as stopped:
            reason = stopped.reason
            if not saved:
                self._save(state, step)
        return reason

    def _init_or_restore(self):
        found = self.checkpointer.restore_latest(self.compiled.abstract_state)
        if found is None:
            old = self.metrics.set_aside()  # lines of an earlier attempt killed before its first checkpoint
            if old:
                self._say(f"no checkpoint to resume from: the earlier metrics log was moved to {old}")
            return self.compiled.init(), 0
        state, meta, host, step = found
        self._resume(meta, host, step)
        return state, step

    def _resume(self, meta: dict, host: dict | None, step: int) -> None:
        """The host side of a checkpoint (`_checkpoint_meta`) back in place; also an ensemble member's."""
        self.pending = from_lists(meta.get("pending_metrics", []))
        self.host_info = from_lists(meta.get("pending_host", []))
        self.selection.history = list(meta.get("selection", []))
        self.sampler.load_state_dict({"meta": meta.get("sampler", {}), "scores": (host or {}).get("scores")})
        self.source.load_state_dict(meta.get("curriculum_source"))
        self.metrics.truncate_after(step)

    def _write_run_files(self) -> None:
        """config.json (with the command line and code version) and the run's own tokenizer copy, for
        evaluation and export without the data cache. Written only once the checkpoints are known to fit
        this config, so a rerun with mistaken settings never overwrites the record of the run it refused."""
        if self.primary:
            record = workdir_lib.run_record(self.config, self.data.manifest)
            workdir_lib.write_json(self.workdir / "config.json", record)
            self.data.tokenizer.save_pretrained(str(self.workdir / "tokenizer"))

    def _save(self, state, step: int) -> None:
        """Saves the state with the sampler and the not-yet-logged metrics of the current log interval, so
        a run resumed between two log steps writes the same log line as an uninterrupted one."""
        if self.pending and not math.isfinite(loss := float(jax.device_get(self.pending[-1]["loss"]))):
            raise _diverged(f"{loss}", step)  # never save a state whose last loss was not looked at
        meta, host = self._checkpoint_meta(step)
        started = time.perf_counter()
        self.checkpointer.save(step, state, meta, host)
        self.estimate.saved(time.perf_counter() - started)

    def _checkpoint_meta(self, step: int) -> tuple[dict, dict | None]:
        """What a checkpoint keeps beside the state: (JSON meta, host arrays or None); `_resume` reads it."""
        sampler = self.sampler.state_dict()
        rescored = self.curriculum.rescoring and sampler.get("scores") is not None
        meta = {"step": step, "sampler": sampler["meta"], "data_fingerprint": self.data.fingerprint,
                "pending_metrics": to_lists(jax.device_get(self.pending)), "pending_host": to_lists(self.host_info),
                "selection": self.selection.history, "curriculum_source": self.source.state_dict()}
        return meta, ({"scores": sampler["scores"]} if rescored else None)

    def _log(self, step: int) -> None:
        c = self.config
        rec = report.log_record(step, jax.device_get(self.pending), self.host_info, setup=self.setup,
                                sampler=self.sampler, sources=self.data.sources,
                                tokens_per_step=c.trainer.batch_size * c.data.seq_len,
                                seconds=time.perf_counter() - self.clock[0], steps=step - self.clock[1])
        if not math.isfinite(rec["loss"]) or not math.isfinite(rec["grad_norm"]):
            raise _diverged(f"{rec['loss']} (gradient norm {rec['grad_norm']})", step)
        rec["train_step_compiles"] = self.counter.count(TRAIN_STEP_NAME)
        source_lib.agree(self.applied, step)  # every process trained on the same curriculum
        self.source.observe(step, "train_loss", rec["loss"])
        self.metrics.write(rec)
        self.progress.log(rec, eta_s=self.estimate.remaining(step, rec["step_time_s"]))
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
