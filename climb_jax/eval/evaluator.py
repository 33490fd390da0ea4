"""A run's evaluation, built once: zero-shot suites, dev-set measures and the eval JSON files.

`Evaluator` is made once per training run. It reads and tokenizes the suites and draws the dev
rows and masks when it is built; each `evaluate(params, step)` only runs the model. Its jitted
functions (eval/perplexity.py) are compiled once per padded shape and run on the training mesh:
parameters already on the mesh are used where they are (no gather to one device), batches are
split over the mesh's batch axes. So evaluating every eighth of a run costs no new compile after
the first evaluation, and a `large` model never has to fit on one chip twice.

What it writes: `<workdir>/eval/step_XXXXXX.json`, atomically (a killed run never leaves half a
file), and never over a finished evaluation: asked again for a step already written, it returns
the written result.
"""

from __future__ import annotations

import json
import math
import time
from typing import Any, Callable

import jax
import numpy as np
from absl import logging
from etils import epath
from jax.sharding import Mesh
from ml_collections import ConfigDict
from transformers import PreTrainedTokenizerBase

from climb_jax.errors import ClimbError
from climb_jax.eval import perplexity as ppl_lib
from climb_jax.eval.blimp import BlimpEvaluator, blimp_average
from climb_jax.eval.progress import in_training
from climb_jax.eval.suites import load_suite
from climb_jax.models.roberta import RobertaConfig
from climb_jax.train.workdir import write_json

# The dev MLM loss's batch: one forward pass per row, so small batches suffice.
_MLM_BATCH = 32
# Its masks: fixed across evaluations (and runs), so the number is comparable from step to step.
_MLM_MASK_PROBABILITY = 0.15
_MLM_SEED = 0


def evaluates(config: ConfigDict) -> bool:
    """Whether the run evaluates at all (periodically or at the end)."""
    return bool(config.eval.at_end or config.trainer.eval_every)


def check_suites(config: ConfigDict) -> None:
    """Reads the suites a run will score (pure Python, no model), so a missing or malformed file is
    reported before data preparation and training rather than when the first evaluation is due."""
    if not evaluates(config):
        return
    ev = config.eval
    for key in ("blimp_dir", "supplement_dir"):
        if ev[key]:
            try:
                load_suite(ev[key], max_pairs_per_file=ev.max_pairs_per_file)
            except ClimbError as e:
                raise type(e)(f"eval.{key}: {e}") from None


def pair_limit_text(max_pairs_per_file: int) -> str:
    """How many pairs of each file are scored, in words: both the run and `climb_jax.evaluate` say it."""
    return "all pairs" if not max_pairs_per_file else f"first {max_pairs_per_file} pairs per file"


def read_finished(path) -> dict | None:
    """A finished evaluation at `path`, or None. A file that is not valid JSON (never written by this
    module, which writes atomically) is moved aside, not overwritten."""
    path = epath.Path(path)
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        aside = path.parent / f"{path.name}.unreadable-{int(time.time())}"
        path.rename(aside)
        logging.warning("%s was not valid JSON; moved it to %s", path, aside)
        return None


class Evaluator:
    """Scores a run's parameters on its suites and dev split; `evaluate(params, step)` -> JSON-able dict.

    Args:
      config: the run's config (its `eval` section says what to score).
      model_cfg: the encoder's shape.
      tokenizer: the run's tokenizer.
      dev_ids: the dev split's token rows [N, L] (None or empty: no dev-set measures).
      mesh: the training mesh (None: the default device).
      workdir: the run directory; results go to `<workdir>/eval/`.
      progress: allow progress bars (on a terminal); False (`--noprogress`): plain lines only. The
        progress of every measure is shown either way, on stdout beside the training's lines.
      stop: returns a stop reason or None, checked between batches: a reason ends the measure with
        `progress.Interrupted` (the training loop saves and measures again on resume).
    """

    def __init__(self, config: ConfigDict, model_cfg: RobertaConfig, tokenizer: PreTrainedTokenizerBase,
                 dev_ids: np.ndarray | None, mesh: Mesh | None, workdir, progress: bool = True,
                 stop: Callable[[], str | None] | None = None):
        ev = config.eval
        self.config = config
        self.model_config = model_cfg
        self.method = ev.method
        self.progress = progress
        self.stop = stop
        self.primary = jax.process_index() == 0
        self.eval_dir = epath.Path(workdir) / "eval"
        self.show = in_training(progress, stop, self.primary)  # (total, desc) -> the Progress of one measure
        self.seconds: dict[str, float] = {}  # the last measured duration of each measure (cost estimate)
        # One scorer (one jitted function, one set of compiled shapes) for every suite and dev measure.
        self.scorer = ppl_lib.PLLScorer(model_cfg, batch_size=ev.batch_size, mesh=mesh)
        self.blimp = BlimpEvaluator.from_config(ev, model_cfg, tokenizer, scorer=self.scorer, progress=self.show)
        self.supplement = (BlimpEvaluator.from_config(ev, model_cfg, tokenizer, suite_dir=ev.supplement_dir,
                                                      scorer=self.scorer, progress=self.show)
                           if ev.supplement_dir else None)
        dev = None if dev_ids is None or len(dev_ids) == 0 else np.asarray(dev_ids)
        self.dev = dev
        self._ppl_sequences = int(ev.perplexity_sequences) if dev is not None else 0
        self._ppl_plan = self.scorer.plan(ppl_lib.dev_rows(dev, self._ppl_sequences, "pseudo_perplexity")) \
            if self._ppl_sequences > 0 else None
        self._mlm = None
        if dev is not None and ev.get("mlm_sequences", 0) > 0:
            shards = self.scorer.placement.shards
            self._mlm = ppl_lib.MLMLoss(model_cfg, dev, batch_size=-(-_MLM_BATCH // shards) * shards,
                                        num_sequences=ev.mlm_sequences, mask_probability=_MLM_MASK_PROBABILITY,
                                        seed=_MLM_SEED, mesh=mesh)
        # The checkpoint-selection sample; its masked copies are planned at the first call, then reused.
        self.selection_rows = None if dev is None else \
            ppl_lib.strided_rows(len(dev), int(ev.get("dev_perplexity_sequences", 10_000)))
        self._selection_plan = None

    @property
    def selection_plan(self):
        """The checkpoint-selection sample's batches (planned once; None without a dev split)."""
        if self._selection_plan is None and self.selection_rows is not None:
            self._selection_plan = self.scorer.plan(ppl_lib.dev_rows(self.dev[self.selection_rows], 0,
                                                                     "dev_perplexity"))
        return self._selection_plan

    def plans(self) -> dict[str, list]:
        """What `evaluate` and `dev_perplexity` run, as {measure: [PLLPlan, ...]}, for the cost estimate
        (the dev MLM loss, one pass per row, is left out: a few batches)."""
        out = {"evaluate": [self.blimp.plan] + ([self.supplement.plan] if self.supplement is not None else [])}
        if self._ppl_plan is not None:
            out["evaluate"].append(self._ppl_plan)
        if self.selection_rows is not None:
            out["dev_perplexity"] = [self.selection_plan]
        return out

    # -- what is scored -------------------------------------------------------------------------
    def describe(self) -> str:
        """One line: the suites, their pair counts and the pair limit (printed at each evaluation)."""
        parts = [f"{self.blimp.suite.name}: {self.blimp.num_pairs} pairs"]
        if self.supplement is not None:
            parts.append(f"{self.supplement.suite.name}: {self.supplement.num_pairs} pairs")
        return f"{', '.join(parts)} ({pair_limit_text(self.blimp.max_pairs_per_file)}; {self.method})"

    def path(self, step: int, name: str | None = None):
        return self.eval_dir / (name or f"step_{int(step):06d}.json")

    def _already_written(self, path) -> dict | None:
        """The finished result at `path`; every process takes the same decision (process 0 reads)."""
        found = read_finished(path) if self.primary else None
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            flag = multihost_utils.broadcast_one_to_all(np.int32(found is not None))
            if int(flag) and found is None:
                found = {"step": None, "written_by": "process 0"}
        return found

    # -- the measures ---------------------------------------------------------------------------
    def evaluate(self, params, step: int, extra: dict[str, Any] | None = None, *, name: str | None = None) -> dict:
        """BLiMP (and the supplement), `blimp_avg`, dev pseudo-perplexity and dev MLM loss at `step`.

        Writes `eval/step_XXXXXX.json` (or `eval/<name>`) unless a finished result is there, which is
        returned instead. `extra` (e.g. the checkpoint-selection record) is added to the result."""
        path = self.path(step, name)
        done = self._already_written(path)
        if done is not None:
            self._say(f"step {step}: evaluation already written to {path}; not scoring it again")
            return done
        self._say(f"step {step}: evaluating on {self.describe()}")
        start = time.perf_counter()
        result: dict[str, Any] = {"step": int(step), "method": self.method}
        result["blimp"] = self.blimp(params)
        if self.supplement is not None:
            result["supplement"] = self.supplement(params)
        average = blimp_average(result["blimp"], result.get("supplement"))
        result["blimp_avg"] = average.pop("blimp_avg")
        result["blimp_avg_groups"] = average
        if self._ppl_plan is not None:
            with self.show(len(self._ppl_plan.batches), f"dev pseudo-perplexity ({self._ppl_sequences} rows)") as bar:
                _, scores = self.scorer.run(params, self._ppl_plan, progress=bar)
            result["perplexity"] = ppl_lib.perplexity_summary(scores)
        if self._mlm is not None:
            with self.show(len(self._mlm.plan), "dev MLM loss") as bar:
                mlm = self._mlm(params, progress=bar)
            mlm["mlm_num_sequences"], mlm["mlm_num_masked"] = mlm.pop("num_sequences"), mlm.pop("num_masked")
            result.setdefault("perplexity", {}).update(mlm)
        if extra:
            result.update(extra)
        result["seconds"] = self.seconds["evaluate"] = time.perf_counter() - start
        if self.primary:
            write_json(path, result)
        self._say(self.summary(result))
        return result

    def dev_perplexity(self, params) -> dict:
        """The reference's checkpoint-selection metric: the mean and standard deviation (unbiased, as
        `torch.std`) of per-row pseudo-perplexity over a strided sample of dev rows.

        Per row: every non-special token masked in turn, exp(mean negative log-likelihood over those
        tokens), as CLIMB (PyTorch)'s `compute_trainer_perplexity`; the sample is `strided_rows`.
        Dropout is off here (the reference left the model in training mode)."""
        if self.selection_rows is None:
            raise ClimbError("dev_perplexity needs a dev split; this run has none.")
        start = time.perf_counter()
        plan = self.selection_plan
        with self.show(len(plan.batches), f"dev perplexity ({len(plan.sequences)} rows, checkpoint selection)") as bar:
            _, result = self.scorer.run(params, plan, progress=bar)
        self.seconds["dev_perplexity"] = time.perf_counter() - start
        rows = ppl_lib.row_perplexities(result)
        return {
            "mean": float(rows.mean()),
            "std": float(rows.std(ddof=1)) if len(rows) > 1 else 0.0,
            "sequences": int(len(rows)),
        }

    # -- output ---------------------------------------------------------------------------------
    def _say(self, message: str) -> None:
        logging.info(message)
        if self.primary:
            print(message, flush=True)

    @staticmethod
    def summary(result: dict) -> str:
        """One line for the console: BLiMP overall, blimp_avg, pseudo-perplexity, pair counts. It follows
        the checkpoint selection's own dev measurements (a mean of per-row perplexities over another
        sample), so it says which checkpoint it scored and what its perplexity is over."""
        blimp = result.get("blimp", {})
        checkpoint = (result.get("selection") or {}).get("checkpoint_step", result.get("step"))
        scored = "" if checkpoint == result.get("step") else f", scoring the checkpoint of step {checkpoint}"
        text = (f"step {result.get('step')}{scored}: BLiMP {blimp.get('overall', float('nan')):.4f} over "
                f"{blimp.get('num_pairs', 0)} pairs ({pair_limit_text(blimp.get('max_pairs_per_file', 0))}), "
                f"blimp_avg {result.get('blimp_avg', float('nan')):.4f}")
        ppl = result.get("perplexity", {})
        if ppl.get("pseudo_perplexity") is not None and math.isfinite(ppl["pseudo_perplexity"]):
            text += (f", pseudo-perplexity {ppl['pseudo_perplexity']:.2f} on {ppl.get('num_sequences', '?')} dev rows "
                     "(per token)")
        return text
