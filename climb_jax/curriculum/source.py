"""The curriculum the train step receives: one pytree, computed on the host side of each step.

The step is compiled once and reads its curriculum as an *argument* (`Curriculum`): the allowed
vocabulary as a bool table of ids, the data curriculum's difficulty threshold, the objective units'
loss weights and head gates, and every parameter group's learning rate. Nothing in it changes a shape
or a dtype, so no curriculum value ever recompiles the step, and the host is free to decide the values:

  schedule  (default, the paper) the pacing functions of the step, exactly as CLIMB (PyTorch) paces
            them; the values are bit for bit those the step used to compute for itself.
  adaptive  (this project's extension beyond CLIMB) the vocabulary and/or data pace rise by
            `increment` whenever the smoothed training loss (or dev pseudo-perplexity) has improved by
            less than `tolerance` over `patience` steps, never below a floor schedule that reaches 1.0
            by its `end_percent` of training (`PlateauController`).

The values are built by one small jitted function of (step, vocabulary pace, threshold), placed
replicated on the mesh, so every process computes the same curriculum from the same host inputs (and
checks that it did: `agree`). Writing a new source means deciding, at each step, a vocabulary pace
(or a whole `allowed_vocab` table) and a data threshold on the host; the step does not change.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from climb_jax.config import choices
from climb_jax.curriculum import objectives, pacing, vocabulary
from climb_jax.errors import CheckpointError, ClimbError, ConfigError


@struct.dataclass
class Curriculum:
    """Exactly what the train step reads of the curricula at one step (fixed shapes and dtypes)."""

    allowed_vocab: jax.Array  # bool [NUM_POS, V]: the (POS class, id) pairs the model may see
    difficulty_threshold: jax.Array  # float32 []: rows scored above it get no loss weight
    unit_weights: jax.Array  # float32 [U]: each unit's weight in the total loss (0 while inactive)
    head_moves: jax.Array  # bool [U]: whether each unit's head is updated
    learning_rates: dict  # {group: float32 []} applied at this step (0 for a frozen head)
    vocab_pace: jax.Array  # float32 []: the pace `allowed_vocab` was built from (logged)


# --------------------------------------------------------------------------------------------
# The adaptive source's controller (host state, saved with every checkpoint).


@dataclasses.dataclass(frozen=True)
class AdaptiveParams:
    targets: tuple[str, ...]  # "vocab" and/or "data"
    signal: str
    start: float
    increment: float
    patience: int
    tolerance: float
    smoothing: float
    floor: pacing.PacingParams

    @classmethod
    def from_config(cls, cfg) -> "AdaptiveParams":
        try:
            floor = pacing.PacingParams.from_config(cfg.floor).validate()
        except ConfigError as e:
            raise ConfigError(f"curriculum.adaptive.floor: {e}") from None
        out = cls(targets=tuple(str(cfg.targets).split(",")), signal=str(cfg.signal), start=float(cfg.start),
                  increment=float(cfg.increment), patience=int(cfg.patience), tolerance=float(cfg.tolerance),
                  smoothing=float(cfg.smoothing), floor=floor)
        for name, ok, want in (("start", 0.0 <= out.start <= 1.0, "lie in [0, 1]"),
                               ("increment", 0.0 < out.increment <= 1.0, "lie in (0, 1]"),
                               ("patience", out.patience > 0, "be a positive number of steps"),
                               ("tolerance", out.tolerance >= 0.0 and math.isfinite(out.tolerance), "be >= 0"),
                               ("smoothing", 0.0 <= out.smoothing < 1.0, "lie in [0, 1)")):
            if not ok:
                raise ConfigError(f"curriculum.adaptive.{name}={getattr(out, name)} must {want}.")
        return out

    def record(self) -> dict:
        return json_safe(dataclasses.asdict(self))


def json_safe(d):
    return {k: (json_safe(v) if isinstance(v, dict) else list(v) if isinstance(v, tuple) else v) for k, v in d.items()}


class PlateauController:
    """One pace that rises by `increment` at each plateau of the observed signal.

    A plateau: the smoothed signal has not improved on its best by more than `tolerance` for
    `patience` steps. The pace is never below the floor schedule (which reaches 1.0 by its
    `end_percent`), and observations happen only at log steps (or dev measurements), so between two of
    them the pace is constant and batches stay a pure function of (seed, step, scores version, pace)."""

    def __init__(self, params: AdaptiveParams, total_steps: int):
        self.params, self.total_steps = params, int(total_steps)
        self.level, self.best, self.since, self.smoothed = params.start, None, 0, None

    def floor(self, step: int) -> float:
        return float(pacing.pace(self.params.floor, int(step), self.total_steps))

    def pace(self, step: int) -> float:
        return float(min(1.0, max(self.level, self.floor(step))))

    def observe(self, step: int, value: float) -> bool:
        """Feeds one observation of the signal at `step`; True when the pace rose."""
        p = self.params
        value = float(value)
        if not math.isfinite(value):
            return False
        self.smoothed = value if self.smoothed is None else p.smoothing * self.smoothed + (1 - p.smoothing) * value
        if self.best is None or self.smoothed < self.best - p.tolerance:
            self.best, self.since = self.smoothed, int(step)
            return False
        if step - self.since < p.patience or self.level >= 1.0:
            return False
        self.level = min(1.0, max(self.level, self.floor(step)) + p.increment)
        self.best, self.since = self.smoothed, int(step)
        return True

    def state_dict(self) -> dict:
        return {"params": self.params.record(), "level": self.level, "best": self.best, "since": self.since,
                "smoothed": self.smoothed}

    def load_state_dict(self, state: dict) -> None:
        saved, now = state.get("params", {}), self.params.record()
        for key in now:
            if saved.get(key) != now[key]:
                raise CheckpointError(
                    f"the checkpoint's adaptive curriculum used curriculum.adaptive.{key}={saved.get(key)!r} but this "
                    f"run has {now[key]!r}; resume with the original setting or start a new workdir.")
        self.level, self.best = float(state["level"]), state["best"]
        self.since, self.smoothed = int(state["since"]), state["smoothed"]


# --------------------------------------------------------------------------------------------
# The source.


class CurriculumSource:
    """Builds each step's `Curriculum` on the host from the schedule or the adaptive controller."""

    def __init__(self, settings, *, sharding=None, adaptive: AdaptiveParams | None = None, ranks=None,
                 unlisted_pace: float = 1.0):
        """`settings`: the run's `StepSettings`; `sharding`: where the curriculum lives (replicated on
        the training mesh); `ranks`: float32 [V] word-list ranks for `vocab_curriculum.kind=word_list`."""
        s = settings
        self.settings, self.adaptive = s, adaptive
        self.controller = PlateauController(adaptive, s.total_steps) if adaptive is not None else None
        ranks = None if ranks is None else np.asarray(ranks, np.float32)

        def build(step, vocab_pace, threshold):
            scheduled = (jnp.ones((), jnp.float32) if s.vocab_kind == "none"
                         else jnp.asarray(pacing.pace(s.vocab_pacing, step, s.total_steps), jnp.float32))
            pace = jnp.where(jnp.isnan(vocab_pace), scheduled, vocab_pace)  # NaN: follow the schedule
            return Curriculum(
                allowed_vocab=vocabulary.allowed_vocab(s.vocab_kind, pace, s.vocab_size, ranks, unlisted_pace),
                difficulty_threshold=jnp.asarray(threshold, jnp.float32),
                unit_weights=objectives.unit_weights(s.units, step, s.total_steps),
                head_moves=objectives.head_updates(s.units, step, s.total_steps),
                learning_rates=s.learning_rates.at(step),
                vocab_pace=pace)

        build.__name__ = "curriculum"
        self._build = jax.jit(build, out_shardings=sharding)

    # -- what the host decides ---------------------------------------------------------------
    def drives(self, target: str) -> bool:
        return self.adaptive is not None and target in self.adaptive.targets

    def vocab_pace(self, step: int) -> float:
        """The vocabulary pace the host sets at `step` (NaN: the schedule, computed in `build`)."""
        return self.controller.pace(step) if self.drives("vocab") else math.nan

    def data_pace(self, step: int) -> float:
        """The data pace at `step` when this source drives it (the sampler's override)."""
        return self.controller.pace(step)

    def at(self, step: int, threshold: float = math.inf) -> Curriculum:
        """The curriculum of the step that trains batch `step` (its rows all scored <= `threshold`)."""
        return self._build(np.int32(step), np.float32(self.vocab_pace(step)), np.float32(threshold))

    def observe(self, step: int, signal: str, value: float) -> bool:
        """An observation of `signal` ("train_loss" at log steps, "dev_loss" at dev measurements)."""
        if self.controller is None or signal != self.adaptive.signal:
            return False
        return self.controller.observe(step, value)

    # -- checkpoints -------------------------------------------------------------------------
    def state_dict(self) -> dict | None:
        return None if self.controller is None else self.controller.state_dict()

    def load_state_dict(self, state: dict | None) -> None:
        if self.controller is None:
            return
        if state is None:
            raise CheckpointError("the checkpoint was written by a run without curriculum.source=adaptive; resume "
                                  "with the original curriculum settings or start a new workdir.")
        self.controller.load_state_dict(state)


def checksum(curriculum: Curriculum) -> str:
    """A digest of every value of a curriculum (this process's copy), for the processes to compare."""
    h = hashlib.blake2b(digest_size=8)
    for leaf in jax.tree_util.tree_leaves(curriculum):
        h.update(np.ascontiguousarray(np.asarray(leaf.addressable_data(0) if isinstance(leaf, jax.Array) else leaf))
                 .tobytes())
    return h.hexdigest()


def agree(curriculum: Curriculum, step: int) -> None:
    """Raises unless every process holds the same curriculum at `step` (a no-op for one process)."""
    if jax.process_count() == 1 or curriculum is None:
        return
    from jax.experimental import multihost_utils

    mine = checksum(curriculum)
    every = multihost_utils.process_allgather(np.frombuffer(bytes.fromhex(mine), np.uint32))
    digests = [bytes(np.asarray(row, np.uint32)).hex() for row in np.asarray(every).reshape(jax.process_count(), -1)]
    if len(set(digests)) > 1:
        raise ClimbError(f"the processes computed different curricula at step {step} (checksums by process: "
                         f"{', '.join(digests)}); every host must run the same code, config and data. Stopped.")


def from_config(config, settings, *, sharding=None, ranks=None) -> CurriculumSource:
    """The run's source: `curriculum.source` with its settings."""
    cur = config.curriculum
    adaptive = AdaptiveParams.from_config(cur.adaptive) if cur.source == "adaptive" else None
    return CurriculumSource(settings, sharding=sharding, adaptive=adaptive, ranks=ranks,
                            unlisted_pace=float(config.vocab_curriculum.unlisted_pace))


def check(config) -> None:
    """Config errors of the source, before any work: an adaptive source must drive an active curriculum."""
    if config.curriculum.source not in choices.CURRICULUM_SOURCES or config.curriculum.source != "adaptive":
        return
    params = AdaptiveParams.from_config(config.curriculum.adaptive)
    active = {"vocab": config.vocab_curriculum.kind != "none", "data": config.data_curriculum.scorer != "none"}
    for target in params.targets:
        if not active[target]:
            what = "vocab_curriculum.kind" if target == "vocab" else "data_curriculum.scorer"
            raise ConfigError(f"curriculum.adaptive.targets includes '{target}' but {what} is 'none': choose a "
                              f"{target} curriculum or drop it from the targets.")
    if params.signal == "dev_loss" and not (config.eval.at_end and config.eval.select == "best_dev_perplexity"):
        raise ConfigError("curriculum.adaptive.signal='dev_loss' observes the dev pseudo-perplexity measured for "
                          "checkpoint selection, which this config never measures (eval.at_end=False or "
                          "eval.select='last'); use signal='train_loss'.")
