"""The training driver: prepare data, build the state, run the compiled step, log, checkpoint, evaluate.

Running it again in the same workdir resumes from the latest readable checkpoint; since batches are a
pure function of (seed, step, difficulty scores) and masks of (seed, step), the resumed run computes
exactly what an uninterrupted run would have.
"""

from __future__ import annotations

import json
import math
import os
import signal
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from etils import epath
from ml_collections import ConfigDict
from tqdm import tqdm

from climb_jax import config_lib
from climb_jax.curriculum import difficulty, vocabulary
from climb_jax.data.dataset import prepare_data
from climb_jax.data.pipeline import InputPipeline
from climb_jax.data.sampler import BatchSampler
from climb_jax.errors import ClimbError, ConfigError, TrainingDiverged
from climb_jax.parallel import mesh as mesh_lib
from climb_jax.train import optim
from climb_jax.train.checkpoint import Checkpointer
from climb_jax.train.compile_count import CompileCounter
from climb_jax.train.setup import RunSetup
from climb_jax.train.step import make_score_fn
from climb_jax.train.workdir import MetricsLog, WorkdirLock, is_local, write_json

TRAIN_STEP_NAME = "train_step"


class _Preemption:
    """Turns SIGTERM (what a preempted TPU VM receives) into a flag the loop checks every step."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread
            self._previous = None
        return self

    def _handle(self, signum, frame):
        self.requested = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def default_cache_dir(config: ConfigDict, workdir) -> str:
    if config.data.cache_dir:
        return config.data.cache_dir
    if is_local(workdir):
        return os.path.join(str(workdir), "cache")
    return os.path.join(os.path.expanduser("~"), ".cache", "climb_jax")


# --------------------------------------------------------------------------------------------
# Difficulty scores for the data curriculum.


def initial_scores(config: ConfigDict, data) -> np.ndarray | None:
    dc = config.data_curriculum
    split = data.train
    if dc.scorer == "none":
        return None
    if dc.scorer == "source_order":
        return difficulty.source_order_scores(split, data.sources, dc.source_order, dc.source_difficulty)
    if dc.scorer == "child_age":
        return difficulty.child_age_scores(split)
    if dc.scorer in ("ngram_perplexity", "self_perplexity"):
        if dc.n_gram <= 0:
            return difficulty.uniform_scores(len(split))
        return difficulty.ngram_scores(split.input_ids, dc.n_gram, dc.ngram_smoothing, len(data.tokenizer))
    raise ConfigError(f"unknown data_curriculum.scorer '{dc.scorer}'")


def _to_lists(items: list[dict]) -> list[dict]:
    return [{k: np.asarray(v).tolist() for k, v in d.items()} for d in items]


def _from_lists(items: list[dict]) -> list[dict]:
    out = []
    for d in items:
        out.append({k: np.asarray(v, np.int64 if k in ("source_ids", "index") else np.float32) for k, v in d.items()})
    return out


# --------------------------------------------------------------------------------------------
# Evaluation.


def run_evaluation(params, setup: RunSetup, data, config: ConfigDict, step: int, mesh=None) -> dict:
    """BLiMP (and an optional second suite) by pseudo-log-likelihood, and dev pseudo-perplexity."""
    from climb_jax.eval.blimp import BlimpEvaluator
    from climb_jax.eval.perplexity import pseudo_perplexity

    ev = config.eval
    result: dict[str, Any] = {"step": step, "method": ev.method}
    evaluator = BlimpEvaluator(setup.model, data.tokenizer, ev.blimp_dir, method=ev.method,
                               batch_size=ev.batch_size, max_pairs_per_file=ev.max_pairs_per_file)
    result["blimp"] = evaluator(params)
    if ev.supplement_dir:
        sup = BlimpEvaluator(setup.model, data.tokenizer, ev.supplement_dir, method=ev.method,
                             batch_size=ev.batch_size, max_pairs_per_file=ev.max_pairs_per_file)
        result["supplement"] = sup(params)
    if ev.perplexity_sequences > 0 and data.dev is not None and len(data.dev) > 0:
        result["perplexity"] = pseudo_perplexity(params, setup.model, np.asarray(data.dev.input_ids),
                                                 batch_size=ev.batch_size, num_sequences=ev.perplexity_sequences)
    if ev.get("mlm_sequences", 0) > 0 and data.dev is not None and len(data.dev) > 0:
        from climb_jax.eval.perplexity import mlm_loss

        result.setdefault("perplexity", {}).update(
            mlm_loss(params, setup.model, np.asarray(data.dev.input_ids), num_sequences=ev.mlm_sequences))
    return result


# --------------------------------------------------------------------------------------------


def _check_eval_suites(config: ConfigDict) -> None:
    """Reads the evaluation suites the run will score (pure Python, no JAX), so a missing or malformed
    file is reported before training rather than when the first evaluation is due."""
    ev = config.eval
    if not (ev.at_end or config.trainer.eval_every):
        return
    from climb_jax.eval.suites import load_suite

    for key in ("blimp_dir", "supplement_dir"):
        if ev[key]:
            try:
                load_suite(ev[key], max_pairs_per_file=ev.max_pairs_per_file)
            except ClimbError as e:
                raise type(e)(f"eval.{key}: {e}") from None


class Trainer:
    """One run in one workdir. `run()` trains (or resumes) to `trainer.total_steps`."""

    def __init__(self, config: ConfigDict, workdir: str, *, progress: bool = True, stop_at: int | None = None):
        """`stop_at` ends the run early (with a checkpoint) without changing its schedule: for tests and
        for splitting a run into jobs."""
        config_lib.validate(config)
        _check_eval_suites(config)
        mesh_lib.setup_runtime(config)
        self.stop_at = stop_at
        self.config = config
        self.workdir = epath.Path(workdir)
        self.progress = progress
        self.primary = jax.process_index() == 0
        self.counter = CompileCounter()

    # -- setup -------------------------------------------------------------------------------
    def _prepare(self) -> None:
        c = self.config
        self.mesh = mesh_lib.create_mesh(c.mesh)
        self.local_batch = mesh_lib.batch_size_per_process(c.trainer.batch_size, self.mesh)
        self._say(f"devices: {jax.device_count()} x {jax.devices()[0].platform} ({jax.devices()[0].device_kind}), "
                  f"mesh {dict(self.mesh.shape)}, processes {jax.process_count()}")
        self.data = prepare_data(c.data, epath.Path(default_cache_dir(c, self.workdir)),
                                 progress=self.progress and self.primary)
        vocab = len(self.data.tokenizer)
        self._say(f"corpus {c.data.corpus}: {len(self.data.train)} training sequences of {c.data.seq_len} tokens "
                  f"from {len(self.data.sources)} sources; tokenizer: byte-level BPE, {vocab} tokens "
                  f"({c.data.token_order} order); data cache {self.data.directory}")
        token_rank = vocabulary.token_rank_table(vocab)
        self.setup = RunSetup.from_config(c, vocab_size=vocab, token_rank=token_rank)
        self._say(f"model: {c.model.size} ({self.setup.model.num_layers} layers, width {self.setup.model.hidden_size}), "
                  f"{c.trainer.total_steps} steps of {c.trainer.batch_size} x {c.data.seq_len} tokens, "
                  f"{c.model.dtype} activations")
        dc = c.data_curriculum
        self.sampler = BatchSampler(
            len(self.data.train), c.trainer.batch_size, c.seed,
            process_index=jax.process_index(), process_count=jax.process_count(),
            scores=initial_scores(c, self.data),
            pacing=self.setup.settings.data_pacing, total_steps=c.trainer.total_steps,
            uniform=dc.uniform_sampling,
        )
        self.state_sharding = mesh_lib.state_shardings(self.setup.abstract_state(), self.mesh)
        self.batch_sharding = mesh_lib.batch_sharding(self.mesh)
        self.checkpointer = Checkpointer(self.workdir / "checkpoints", keep=c.trainer.keep_checkpoints,
                                         async_save=c.trainer.async_checkpoints)
        self.metrics = MetricsLog(self.workdir / "metrics.jsonl", enabled=self.primary)
        self.schedules = optim.schedules(c.trainer, self.setup.units)

    def _write_run_files(self) -> None:
        """config.json and the run's own tokenizer copy (for evaluation and export without the data cache).
        Written only once the checkpoints are known to fit this config, so a rerun with mistaken settings
        never overwrites the record of the run it refused to resume."""
        if self.primary:
            write_json(self.workdir / "config.json", json.loads(self.config.to_json_best_effort()))
            self.data.tokenizer.save_pretrained(str(self.workdir / "tokenizer"))

    def _init_or_restore(self):
        abstract = self.setup.abstract_state(lambda shapes: self.state_sharding)
        found = self.checkpointer.restore_latest(abstract)
        if found is None:
            init = jax.jit(lambda: self.setup.init_state(self.config.seed), out_shardings=self.state_sharding)
            old = self.metrics.set_aside()  # lines of an earlier attempt killed before its first checkpoint
            if old:
                self._say(f"no checkpoint to resume from: the earlier metrics log was moved to {old}")
            return init(), 0
        state, meta, host, step = found
        self._restored_pending = (_from_lists(meta.get("pending_metrics", [])),
                                  _from_lists(meta.get("pending_host", [])))
        self.sampler.load_state_dict({"meta": meta.get("sampler", {}), "scores": (host or {}).get("scores")})
        self.metrics.truncate_after(step)
        self._say(f"resuming from the checkpoint at step {step}")
        return state, step

    # -- helpers -----------------------------------------------------------------------------
    def _say(self, message: str) -> None:
        logging.info(message)
        if self.primary:
            print(message, flush=True)

    def _save(self, state, step: int, pending: list, host_info: list) -> None:
        """Saves the state with the sampler and the not-yet-logged metrics of the current log interval, so
        a run resumed between two log steps writes the same log line as an uninterrupted one."""
        sampler_state = self.sampler.state_dict()
        host = {"scores": sampler_state["scores"]} if sampler_state.get("scores") is not None and \
            self.config.data_curriculum.scorer == "self_perplexity" else None
        meta = {"step": step, "sampler": sampler_state["meta"], "data_fingerprint": self.data.fingerprint,
                "pending_metrics": _to_lists(jax.device_get(pending)), "pending_host": _to_lists(host_info)}
        self.checkpointer.save(step, state, meta, host)

    def _rescore(self, state, step: int) -> None:
        """Self-perplexity: the model's own per-sequence loss becomes the difficulty, every `update_every` steps."""
        dc = self.config.data_curriculum
        fn = self._score_fn
        n = len(self.data.train)
        count = max(1, int(round(dc.rescore_fraction * n)))
        rng = np.random.default_rng([self.config.seed, step])
        indices = np.sort(rng.choice(n, size=count, replace=False)) if count < n else np.arange(n)
        key = jax.random.PRNGKey(self.config.seed + 7919 * (step + 1))

        def score_fn(ids, pos, idx):
            return np.asarray(fn(state.params, jnp.asarray(ids), jnp.asarray(idx), key))

        fresh = difficulty.self_perplexity_scores(score_fn, self.data.train.input_ids, self.data.train.pos_ids,
                                                  indices=indices, batch_size=dc.rescore_batch_size)
        scores = np.array(self.sampler.scores if self.sampler.scores is not None else np.zeros(n, np.float32))
        scores[indices] = fresh
        self.sampler.set_scores(scores.astype(np.float32), version=step // dc.update_every)
        logging.info("re-scored %d sequences at step %d (mean perplexity %.2f)", count, step, float(fresh.mean()))

    def _log_record(self, step: int, pending: list, t0: float, steps_done: int, host_info: list) -> dict:
        fetched = jax.device_get([m for m in pending])
        c = self.config
        rec: dict[str, Any] = {"step": step}
        losses = np.array([m["loss"] for m in fetched], np.float64)
        rec["loss"] = float(losses.mean())
        rec["grad_norm"] = float(np.mean([m["grad_norm"] for m in fetched]))
        rec["learning_rate"] = float(self.schedules["encoder"](step - 1))
        elapsed = time.perf_counter() - t0
        tokens_per_step = c.trainer.batch_size * c.data.seq_len
        rec["tokens_seen"] = int(step * tokens_per_step)
        rec["step_time_s"] = elapsed / max(steps_done, 1)
        rec["tokens_per_s"] = tokens_per_step * steps_done / max(elapsed, 1e-9)
        stats = np.sum([m["unit_stats"] for m in fetched], axis=0)
        last = fetched[-1]
        for i, u in enumerate(self.setup.units):
            if stats[i, 1] > 0:
                rec[f"{u.name}_loss"] = float(stats[i, 0] / stats[i, 1])
                rec[f"{u.name}_accuracy"] = float(stats[i, 2] / stats[i, 1])
            rec[f"{u.name}_active"] = float(last["objective_weights"][i])
            if u.task != "mlm":
                rec[f"{u.name}_learning_rate"] = float(self.schedules[u.head](step - 1))
        if self.setup.settings.vocab_kind != "none":
            pace = float(last["vocab_pace"])
            rec["vocab_pace"] = pace
            rec["vocab_allowed_fraction"] = float(vocabulary.allowed_vocab_fraction(
                self.setup.settings.vocab_kind, pace, self.setup.model.vocab_size))
            rec["unk_fraction"] = float(sum(m["unk_replaced"] for m in fetched) / max(sum(m["real_tokens"] for m in fetched), 1))
        if self.config.data_curriculum.scorer != "none":
            rec["data_fraction"] = float(last["data_fraction"])
            src = np.concatenate([h["source_ids"] for h in host_info])
            counts = np.bincount(src, minlength=len(self.data.sources)) / max(len(src), 1)
            rec["source_mix"] = {name: float(counts[i]) for i, name in enumerate(self.data.sources)}
            if self.sampler.scores is not None:
                idx = np.concatenate([h["index"] for h in host_info])
                rec["batch_difficulty"] = float(np.mean(self.sampler.scores[idx]))
        rec["train_step_compiles"] = self.counter.count(TRAIN_STEP_NAME)
        return rec

    def _evaluate(self, state, step: int) -> dict | None:
        if not self.primary and jax.process_count() > 1:
            pass  # every process takes part in the computation; only process 0 writes
        params = jax.device_get(state.params)
        result = run_evaluation(params, self.setup, self.data, self.config, step)
        if self.primary:
            write_json(self.workdir / "eval" / f"step_{step:06d}.json", result)
        blimp = result.get("blimp", {}).get("overall")
        print(f"step {step}: BLiMP {blimp if blimp is None else round(blimp, 4)}"
              + (f", pseudo-perplexity {result['perplexity'].get('pseudo_perplexity'):.2f}" if "perplexity" in result else ""),
              flush=True)
        return result

    # -- the run -----------------------------------------------------------------------------
    def run(self) -> dict:
        lock = WorkdirLock(self.workdir).acquire() if is_local(self.workdir) and self.primary else None
        try:
            with self.counter, _Preemption() as preempt:
                return self._run(preempt)
        finally:
            if lock is not None:
                lock.release()

    def _run(self, preempt: _Preemption) -> dict:
        c = self.config
        self._prepare()
        state, start = self._init_or_restore()
        self._write_run_files()
        total = c.trainer.total_steps
        step_fn = self.setup.train_step()
        step_fn.__name__ = TRAIN_STEP_NAME
        p_step = jax.jit(step_fn, in_shardings=(self.state_sharding, self.batch_sharding),
                         out_shardings=(self.state_sharding, None), donate_argnums=0)
        if c.data_curriculum.scorer == "self_perplexity":
            self._score_fn = jax.jit(make_score_fn(self.setup.model, c.trainer.mask_probability))
        pipeline = InputPipeline(self.data.train, self.sampler, prefetch=c.data.prefetch)
        last_eval = None
        bar = tqdm(total=total, initial=start, desc="train", unit="step", disable=not (self.progress and self.primary),
                   dynamic_ncols=True)
        pending, host_info = getattr(self, "_restored_pending", ([], []))
        t0, steps_done = time.perf_counter(), 0
        step = start
        try:
            while step < total:
                segment_end = total
                if c.data_curriculum.scorer == "self_perplexity":
                    upd = c.data_curriculum.update_every
                    if step > 0 and step % upd == 0 and self.sampler.version < step // upd:
                        self._rescore(state, step)
                    segment_end = min(total, (step // upd + 1) * upd)
                for step_idx, batch in pipeline.iterate(step, segment_end):
                    host_info.append({"source_ids": batch["source_ids"], "index": batch["index"]})
                    device_batch = mesh_lib.global_batch(
                        {"input_ids": batch["input_ids"], "pos_ids": batch["pos_ids"]}, self.batch_sharding)
                    state, metrics = p_step(state, device_batch)
                    pending.append(metrics)
                    steps_done += 1
                    step = step_idx + 1
                    bar.update(1)
                    is_last = step == total
                    # Not on preemption: the checkpoint carries the interval's pending metrics, so the resumed run
                    # writes the same log lines as an uninterrupted one.
                    if step % c.trainer.log_every == 0 or is_last:
                        rec = self._log_record(step, pending, t0, steps_done, host_info)
                        if not math.isfinite(rec["loss"]) or not math.isfinite(rec["grad_norm"]):
                            raise TrainingDiverged(
                                f"the loss became {rec['loss']} (gradient norm {rec['grad_norm']}) by step {step}; "
                                "training stopped. The last good checkpoint is kept; lower trainer.lr or check the "
                                "data, then rerun (it resumes from that checkpoint)."
                            )
                        self.metrics.write(rec)
                        bar.set_postfix(loss=f"{rec['loss']:.3f}", tok_s=f"{rec['tokens_per_s']:.0f}")
                        pending, host_info = [], []
                        t0, steps_done = time.perf_counter(), 0
                    if step % c.trainer.checkpoint_every == 0 or is_last or preempt.requested:
                        if pending:  # never save a state whose last loss was not looked at
                            loss = float(jax.device_get(pending[-1]["loss"]))
                            if not math.isfinite(loss):
                                raise TrainingDiverged(
                                    f"the loss became {loss} at step {step}; training stopped before saving. The last "
                                    "good checkpoint is kept; lower trainer.lr or check the data, then rerun.")
                        self._save(state, step, pending, host_info)
                    if self.stop_at is not None and step >= self.stop_at and not is_last:
                        if step % c.trainer.checkpoint_every:
                            self._save(state, step, pending, host_info)
                        self.checkpointer.wait()
                        pipeline.close()
                        self.final_state = state
                        return {"step": step, "stopped": True}
                    if preempt.requested:
                        self.checkpointer.wait()
                        print(f"SIGTERM received: saved a checkpoint at step {step}; rerun the same command to "
                              "resume.", flush=True)
                        pipeline.close()
                        return {"step": step, "preempted": True}
                    if c.trainer.eval_every and step % c.trainer.eval_every == 0 and not is_last:
                        last_eval = self._evaluate(state, step)
                        t0, steps_done = time.perf_counter(), 0
                pipeline.close()
        finally:
            pipeline.close()
            bar.close()
            self.checkpointer.wait()
        if c.eval.at_end:
            eval_path = self.workdir / "eval" / f"step_{total:06d}.json"
            if eval_path.exists():
                last_eval = json.loads(eval_path.read_text())
            else:
                last_eval = self._evaluate(state, total)
        self.checkpointer.close()
        self.final_state = state
        return {"step": total, "eval": last_eval, "train_step_compiles": self.counter.count(TRAIN_STEP_NAME)}


def train_and_evaluate(config: ConfigDict, workdir: str, *, progress: bool = True,
                       stop_at: int | None = None) -> dict:
    return Trainer(config, workdir, progress=progress, stop_at=stop_at).run()
