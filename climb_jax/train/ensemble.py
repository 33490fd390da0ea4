"""Many runs, one program: an ensemble's members trained by one vmapped train step.

Runs that share a model shape differ only in their seed, their data order and the curriculum values the
step receives as arguments, so R of them are one `jax.vmap` over stacked states `[R, ...]`, batches
`[R, B, L]` and curricula: one compile, R times the arithmetic per step. Each member is an ordinary run
(`Trainer`'s parts, built for its own workdir: data, sampler, curriculum source, metrics log, its own
checkpoints, checkpoint selection and evaluations), so `compare`, `evaluate` and `export` read it
unchanged; this module only stacks what the members produce and splits what the step returns.

Resuming needs every member at the same step: the stacked state is saved in one orbax save under
`<workdir>/checkpoints/` (atomic), with each member's host state (sampler, curriculum source, the
metrics of the current log interval) in its meta. A member whose loss turns non-finite is stopped on the
device (its update is refused by a per-member alive flag, so its state stays the last good one) and on
the host (no more logs, saves or evaluations: its last good checkpoint is kept); the others go on.
"""

from __future__ import annotations

import dataclasses
import math
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from etils import epath
from ml_collections import ConfigDict

from climb_jax.data.pipeline import InputPipeline
from climb_jax.eval.evaluator import read_finished
from climb_jax.eval.progress import Interrupted
from climb_jax.parallel import mesh as mesh_lib
from climb_jax.train import report
from climb_jax.train import workdir as workdir_lib
from climb_jax.train.checkpoint import Checkpointer
from climb_jax.train.compile_count import CompileCounter
from climb_jax.train.ensemble_members import Member, check_shared, expand
from climb_jax.train.loop import DONE_FILE, Trainer
from climb_jax.train.selection import explain
from climb_jax.train.setup import TRAIN_STEP_NAME
from climb_jax.train.signals import StopSignals
from climb_jax.train.state import create_train_state
from climb_jax.train.step import make_train_step

STATUS_FILE = "ensemble.json"  # the members and their state; not config.json, so compare never takes it for a run
BATCH_KEYS = ("input_ids", "pos_ids", "score")


def make_ensemble_step(settings, txs):
    """`(states [R], batches [R], curricula [R], alive bool [R]) -> (states, metrics [R])`: the solo step
    vmapped over members. A member not alive, or whose loss or gradient norm is not finite at this step,
    keeps its state (`alive` in the metrics says which members updated)."""
    one = make_train_step(settings, txs)

    def member_step(state, batch, cur, alive):
        new, metrics = one(state, batch, cur)
        ok = alive & jnp.isfinite(metrics["loss"]) & jnp.isfinite(metrics["grad_norm"])
        kept = jax.tree_util.tree_map(lambda n, o: jnp.where(ok, n, o), new, state)
        return kept, dict(metrics, alive=ok)

    def train_step(states, batches, curricula, alive):
        return jax.vmap(member_step)(states, batches, curricula, alive)

    train_step.__name__ = TRAIN_STEP_NAME  # compile counters (and the metrics log) see one train step
    return train_step


def shared_settings(settings: list):
    """The step settings that serve every member: the first's, with the allowed-vocabulary lookup on
    when any member has a vocabulary curriculum (a member without one gets an all-True table, which maps
    every id to itself: bit-identical to its own step without the lookup)."""
    vocab = [s for s in settings if s.vocab_kind != "none"]
    if not vocab:
        return settings[0]
    return dataclasses.replace(settings[0], vocab_kind=vocab[0].vocab_kind, vocab_pacing=vocab[0].vocab_pacing,
                               unk_targets=vocab[0].unk_targets)


def stack(trees):
    return jax.tree_util.tree_map(lambda *x: jnp.stack(x), *trees)


_take = jax.jit(lambda tree, i: jax.tree_util.tree_map(lambda x: x[i], tree))


class _MemberProgress(report.Progress):
    """One plain line per log step, prefixed with the member's name (R bars would fight for one line)."""

    def __init__(self, enabled: bool, total: int, tag: str):
        super().__init__(enabled, total, bar=False)
        self.tag = tag

    def log(self, rec: dict, eta_s: float | None = None) -> None:
        if self.enabled:
            print(f"[{self.tag}] step {rec['step']}/{self.total}: loss {rec['loss']:.4f}", flush=True)


class MemberRun(Trainer):
    """One member: a `Trainer` whose steps the ensemble drives; its messages carry its name."""

    def __init__(self, member: Member, workdir, *, stop_at, signals, counter):
        self.tag = member.dirname
        super().__init__(member.config, workdir, progress=False, stop_at=stop_at, signals=signals)
        self.counter = counter  # the ensemble's: its one compiled step is each member's step
        self.progress = _MemberProgress(self.primary, int(member.config.trainer.total_steps), self.tag)
        self.diverged_at: int | None = None

    def _say(self, message: str) -> None:
        logging.info("[%s] %s", self.tag, message)
        if self.primary:
            print(f"[{self.tag}] {message}", flush=True)

    def _save(self, state, step: int) -> None:
        if step in self.checkpointer.all_steps():  # an attempt killed before the ensemble's save wrote it:
            return  # the same state (a deterministic function of the run)
        super()._save(state, step)

    def due(self, step: int) -> bool:
        """Whether `Trainer._after_step` has anything to do at `step` (the member's state is sliced out of
        the stacked one only then)."""
        t = self.config.trainer
        return bool(step % t.log_every == 0 or step == t.total_steps or step % t.checkpoint_every == 0
                    or step in self.selection.points or (t.eval_every and step % t.eval_every == 0)
                    or self.estimate.stages is None or self._stop_reason(step) is not None)


class EnsembleTrainer:
    """An ensemble in one workdir: `run()` trains (or resumes) every member to `trainer.total_steps` and
    evaluates each one alive. `members`: the expanded members (`ensemble_members.expand`)."""

    def __init__(self, members: list[Member], workdir: str, *, progress: bool = True, stop_at: int | None = None,
                 signals: StopSignals | None = None):
        check_shared(members)
        self.workdir = epath.Path(workdir)
        self.signals = signals or StopSignals()
        self.counter = CompileCounter()
        self.members = members
        self.runs: list[MemberRun] = []
        for m in members:
            if not m.config.data.cache_dir:  # one prepared dataset for all members
                with m.config.unlocked():
                    m.config.data.cache_dir = str(self.workdir / "cache")
            self.runs.append(MemberRun(m, self.workdir / m.dirname, stop_at=stop_at, signals=self.signals,
                                       counter=self.counter))
        first = self.runs[0]
        self.primary, self.progress = first.primary, progress
        self.total = int(first.config.trainer.total_steps)
        self.checkpoint_every = int(first.config.trainer.checkpoint_every)
        settings = shared_settings([r.setup.settings for r in self.runs])
        setup = first.setup
        seeds = jnp.stack([jax.random.PRNGKey(m.seed) for m in members])
        # Everything on the members' mesh, replicated (the curricula are placed there already): one type for
        # the state in and out, so the step compiles once.
        self.sharding = mesh_lib.replicated(first.mesh)
        self.init = jax.jit(lambda: jax.vmap(lambda k: create_train_state(k, setup.model, setup.units, setup.txs))(seeds),
                            out_shardings=self.sharding)
        self.step_fn = jax.jit(make_ensemble_step(settings, setup.txs), in_shardings=self.sharding,
                               out_shardings=(self.sharding, None), donate_argnums=0)
        self.checkpointer = Checkpointer(self.workdir / "checkpoints", keep=first.config.trainer.keep_checkpoints,
                                         async_save=first.config.trainer.async_checkpoints)
        self.alive = np.ones(len(members), bool)

    def _say(self, message: str) -> None:
        logging.info(message)
        if self.primary:
            print(message, flush=True)

    def run(self) -> dict:
        """{step, stop_reason, state (stacked), train_step_compiles, members: [{name, label, seed, workdir,
        status ('done', 'training' or 'diverged at step N'), eval}]}."""
        lock = workdir_lib.WorkdirLock(self.workdir).acquire() if workdir_lib.is_local(self.workdir) else None
        try:
            with self.counter, self.signals:
                return self._run()
        finally:
            self.checkpointer.close()
            for r in self.runs:
                r.checkpointer.close()
                r.metrics.close()
                r.selection.close()
            if lock is not None:
                lock.release()

    def _run(self) -> dict:
        state, start = self._init_or_restore()
        for r in self.runs:
            r._write_run_files()
        finals = [read_finished(r.evaluator.path(self.total)) if r.config.eval.at_end else None for r in self.runs]
        if start:
            self._say(f"resuming the ensemble from the checkpoint at step {start}")
        state, step, reason = self._train(state, start)
        self.checkpointer.wait()
        for i, r in enumerate(self.runs):
            r.checkpointer.wait()
            if reason == "done" and self.alive[i]:
                finals[i], reason = self._finish(r, _take(state, i), finals[i], reason)
        self._write_status(step, finals)
        out = [{"name": r.tag, "label": m.label, "seed": m.seed, "workdir": str(r.workdir),
                "status": self._status(i, step), "eval": finals[i]}
               for i, (r, m) in enumerate(zip(self.runs, self.members))]
        if reason in ("preempted", "interrupted"):
            self._say(report.stopped(reason, step, start))
        return {"step": step, "stop_reason": reason, "state": state, "members": out,
                "train_step_compiles": self.counter.count(TRAIN_STEP_NAME)}

    def _finish(self, r: MemberRun, state, final, reason: str):
        """A member's final evaluation (of its chosen params) and done.json, as `Trainer.run` writes them."""
        evaluation = final
        if r.config.eval.at_end and final is None:
            try:
                params = r.selection.final_params(state.params, r.compiled.abstract_state.params)
                evaluation = r._evaluate(params, self.total, extra={"selection": r.selection.record()})
            except Interrupted as stopped:
                return None, stopped.reason
            if explain((evaluation or {}).get("selection")):
                r._say(explain(evaluation["selection"]))
        if r.primary:
            written = str(r.evaluator.path(self.total)) if evaluation else None
            workdir_lib.write_json(r.workdir / DONE_FILE, {"step": self.total, "eval": written})
        return evaluation, reason

    def _status(self, i: int, step: int) -> str:
        at = self.runs[i].diverged_at
        return f"diverged at step {at}" if at is not None else ("done" if step >= self.total else "training")

    def _write_status(self, step: int, finals) -> None:
        if self.primary:
            workdir_lib.write_json(self.workdir / STATUS_FILE, {"step": step, "members": [
                {"name": r.tag, "label": m.label, "seed": m.seed, "workdir": r.tag, "status": self._status(i, step),
                 "eval": str(r.evaluator.path(self.total)) if finals[i] else None}
                for i, (r, m) in enumerate(zip(self.runs, self.members))]})

    # -- the stacked state and its checkpoint ---------------------------------------------------------
    def _init_or_restore(self):
        abstract = jax.tree_util.tree_map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=self.sharding),
                                          jax.eval_shape(self.init))
        found = self.checkpointer.restore_latest(abstract)
        if found is None:
            for r in self.runs:
                old = r.metrics.set_aside()
                if old:
                    r._say(f"no checkpoint to resume from: the earlier metrics log was moved to {old}")
            return self.init(), 0
        state, meta, host, step = found
        names = [r.tag for r in self.runs]
        if meta.get("members_names") != names:
            from climb_jax.errors import CheckpointError

            raise CheckpointError(f"the ensemble checkpoint of step {step} in {self.checkpointer.directory} holds the "
                                  f"members {meta.get('members_names')}, this config {names}: rerun with the ensemble "
                                  "the run was started with, or choose a new --workdir.")
        for i, r in enumerate(self.runs):
            scores = (host or {}).get(f"scores_{i}")
            r._resume(meta["members"][i], None if scores is None else {"scores": scores}, step)
            r.diverged_at = meta["diverged_at"][i]
        self.alive = np.asarray([d is None for d in meta["diverged_at"]], bool)
        return state, step

    def _save(self, state, step: int) -> None:
        metas, host = [], {}
        for i, r in enumerate(self.runs):
            meta, h = r._checkpoint_meta(step)
            metas.append(meta)
            if h:
                host[f"scores_{i}"] = h["scores"]
        meta = {"step": step, "members_names": [r.tag for r in self.runs], "members": metas,
                "diverged_at": [r.diverged_at for r in self.runs]}
        self.checkpointer.save(step, state, meta, host or None)

    # -- training -------------------------------------------------------------------------------------
    def _live(self):
        return [(i, r) for i, r in enumerate(self.runs) if self.alive[i]]

    def _stop_reason(self, step: int) -> str | None:
        if not self.alive.any():
            return "diverged"
        return self.runs[0]._stop_reason(step)

    def _train(self, state, step: int):
        """Steps until there is a stop reason; returns (state, step, reason)."""
        pipelines = [InputPipeline(r.data.train, r.sampler, prefetch=r.config.data.prefetch) for r in self.runs]
        first = step
        reason = self._stop_reason(step)
        if step and reason in (None, "done"):  # resumed after a stop signal during a measurement at `step`
            reason = self._each(lambda r, s: r._scheduled_evaluations(s, step, saved=True), state) or reason
        for r in self.runs:
            r.clock = (time.perf_counter(), step)
        try:
            while reason is None:
                try:
                    for i, r in self._live():
                        if r.curriculum.rescoring:
                            r.curriculum.maybe_rescore(_take(state.params, i), step, r.sampler)
                except Interrupted as stopped:
                    reason = stopped.reason
                    if step != first and step % self.checkpoint_every:
                        self._each(lambda r, s: r._save(s, step), state)
                        self._save(state, step)
                    break
                end = min(r._segment_end(step) for r in self.runs)
                for items in zip(*(p.iterate(step, end) for p in pipelines)):
                    state, step = self._step(state, items)
                    reason = self._each(lambda r, s: r._after_step(s, step), state, due=step) or self._stop_reason(step)
                    if step % self.checkpoint_every == 0 or reason is not None:
                        self._save(state, step)
                    if reason is not None:
                        break
        finally:
            for p in pipelines:
                p.close()
        return state, step, reason

    def _step(self, state, items):
        index = items[0][0]
        curricula = []
        for r, (_, batch) in zip(self.runs, items):
            r.applied = r.source.at(index, batch["threshold"])
            curricula.append(r.applied)
        batch = jax.device_put({k: np.stack([b[k] for _, b in items]) for k in BATCH_KEYS}, self.sharding)
        state, metrics = self.step_fn(state, batch, stack(curricula), jax.device_put(self.alive, self.sharding))
        step = index + 1
        fetched = jax.device_get(metrics)  # a few scalars per member: the alive flags decide the next step
        for i, r in self._live():
            mine = jax.tree_util.tree_map(lambda x: x[i], fetched)
            if not mine.pop("alive"):
                self._diverged(i, step, mine)
                continue
            r.pending.append(mine)
            r.host_info.append({k: items[i][1][k] for k in ("source_ids", "index", "data_fraction", "data_pace")})
        return state, step

    def _diverged(self, i: int, step: int, metrics: dict) -> None:
        r = self.runs[i]
        self.alive[i] = False
        r.diverged_at = step
        kept = r.checkpointer.all_steps()
        r._say(f"member {r.tag} diverged at step {step} (loss {float(metrics['loss'])}, gradient norm "
               f"{float(metrics['grad_norm'])}): stopped; "
               + (f"its last good checkpoint (step {kept[-1]}) is kept" if kept else "it has no checkpoint yet")
               + (f"; the other {int(self.alive.sum())} members go on" if self.alive.any() else ""))

    def _each(self, call, state, due: int | None = None) -> str | None:
        """`call(member, its state)` for every member alive (at step `due`: only those with something to
        do); the first stop reason they return."""
        reason = None
        for i, r in self._live():
            if due is None or r.due(due):
                reason = call(r, _take(state, i)) or reason
        return reason


def train_ensemble(config: ConfigDict, workdir: str, *, progress: bool = True, stop_at: int | None = None) -> dict:
    """Trains an ensemble config (`configs/ensemble.py`)."""
    return train_members(expand(config), workdir, progress=progress, stop_at=stop_at)


def train_members(members: list[Member], workdir: str, *, progress: bool = True, stop_at: int | None = None) -> dict:
    """The command line's entry: the stop signals are handled from before the data is prepared."""
    with StopSignals() as signals:
        trainer = EnsembleTrainer(members, workdir, progress=progress, stop_at=stop_at, signals=signals)
        return trainer.run()


def summary(result: dict) -> list[str]:
    """One line per member: its status and where its outputs are."""
    lines = []
    for m in result["members"]:
        score = (m["eval"] or {}).get("blimp_avg") if isinstance(m["eval"], dict) else None
        extra = f", blimp_avg {score:.3f}" if isinstance(score, float) and math.isfinite(score) else ""
        lines.append(f"  {m['name']}: {m['status']}{extra} -> {m['workdir']}")
    return lines
