"""Everything static about a run, derived once from its config: model, units, optimizers, step settings."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
from ml_collections import ConfigDict

from climb_jax.config import schema
from climb_jax.curriculum import objectives
from climb_jax.curriculum import source as source_lib
from climb_jax.models.roberta import RobertaConfig
from climb_jax.train import optim
from climb_jax.train.state import TrainState, create_train_state
from climb_jax.train.step import StepSettings, make_train_step

TRAIN_STEP_NAME = "train_step"  # the compiled step's name, as compile counters see it


@dataclasses.dataclass(frozen=True)
class Compiled:
    """A run's jitted functions with their shardings on one mesh, built once by `RunSetup.compile`."""

    init: Callable[[], TrainState]  # () -> a fresh state, placed by `state_sharding`
    step: Callable  # (state, batch, curriculum) -> (state, metrics); donates the state
    source: source_lib.CurriculumSource  # the curriculum of each step, replicated on the mesh
    state_sharding: Any
    batch_sharding: Any
    abstract_state: Any  # ShapeDtypeStructs carrying `state_sharding` (for restores and AOT compiles)

    def abstract_curriculum(self):
        """The curriculum argument's shapes, dtypes and sharding (for AOT compiles)."""
        return jax.eval_shape(lambda: self.source.at(0))


@dataclasses.dataclass
class RunSetup:
    config: ConfigDict
    model: RobertaConfig
    units: tuple[objectives.Unit, ...]
    settings: StepSettings
    txs: dict
    ranks: Any = None  # float32 [V] word-list ranks (vocab_curriculum.kind=word_list), else None

    @classmethod
    def from_config(cls, config: ConfigDict, vocab_size: int, parsed: schema.Parsed | None = None,
                    ranks=None) -> "RunSetup":
        """`parsed` is `schema.validate(config)` (computed here when not given); `ranks` the word list's
        ranks per id (`curriculum.word_list.ranks_for`) for a `word_list` vocabulary curriculum."""
        parsed = parsed or schema.validate(config)
        model = dataclasses.replace(parsed.model, vocab_size=int(vocab_size))
        settings = StepSettings.from_config(config, model, parsed.units)
        return cls(config, model, parsed.units, settings, optim.make_optimizers(config.trainer, parsed.units), ranks)

    def init_state(self, seed: int) -> TrainState:
        return create_train_state(jax.random.PRNGKey(seed), self.model, self.units, self.txs)

    def abstract_state(self, sharding=None):
        """The state's shapes and dtypes (with `sharding` on every leaf when given), for orbax restores."""
        shapes = jax.eval_shape(lambda: self.init_state(0))
        if sharding is None:
            return shapes
        if callable(sharding):
            shardings = sharding(shapes)
            return jax.tree_util.tree_map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                                          shapes, shardings)
        return jax.tree_util.tree_map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), shapes)

    def train_step(self):
        return make_train_step(self.settings, self.txs)

    def compile(self, mesh, seed: int | None = None, name: str = TRAIN_STEP_NAME) -> Compiled:
        """The one place the jit wiring lives (mesh -> shardings -> jit(init) -> jit(step)), used by the
        training loop, the benchmarks and the ahead-of-time compiler alike, so what is measured or
        compiled for a TPU is exactly what trains. `name` is the step's name as compile counters see it
        (a benchmark compiling several configurations gives each its own)."""
        from climb_jax.parallel import mesh as mesh_lib

        seed = self.config.seed if seed is None else seed
        state_sharding = mesh_lib.state_shardings(self.abstract_state(), mesh)
        batch_sharding = mesh_lib.batch_sharding(mesh)
        init = jax.jit(lambda: self.init_state(seed), out_shardings=state_sharding)
        curriculum_sharding = mesh_lib.replicated(mesh)
        source = source_lib.from_config(self.config, self.settings, sharding=curriculum_sharding, ranks=self.ranks)
        step_fn = self.train_step()
        step_fn.__name__ = name
        step = jax.jit(step_fn, in_shardings=(state_sharding, batch_sharding, curriculum_sharding),
                       out_shardings=(state_sharding, None), donate_argnums=0)
        return Compiled(init=init, step=step, source=source, state_sharding=state_sharding,
                        batch_sharding=batch_sharding, abstract_state=self.abstract_state(lambda shapes: state_sharding))
