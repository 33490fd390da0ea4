"""Device mesh and sharding rules, in one place.

One code path for 1 CPU, 8 fake CPU devices, one GPU and multi-host TPU slices: a `Mesh` with axes
('data', 'fsdp', 'model'), batches sharded over ('data', 'fsdp'), parameters replicated, or split over
'fsdp' (their largest divisible dimension) and 'model' (the output dimension of large matrices).
"""

from __future__ import annotations

import re

import jax
import numpy as np
from absl import logging
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P
from ml_collections import ConfigDict

from climb_jax.errors import ConfigError

AXES = ("data", "fsdp", "model")
BATCH_AXES = ("data", "fsdp")


def maybe_initialize_distributed(cfg: ConfigDict) -> None:
    """`jax.distributed.initialize` for multi-host runs (Cloud TPU fills in the arguments itself)."""
    if not cfg.initialize:
        return
    kwargs = {}
    if cfg.coordinator_address:
        kwargs = dict(coordinator_address=cfg.coordinator_address, num_processes=cfg.num_processes,
                      process_id=cfg.process_id)
    jax.distributed.initialize(**kwargs)
    logging.info("distributed: process %d of %d", jax.process_index(), jax.process_count())


def create_mesh(cfg: ConfigDict, devices=None) -> Mesh:
    """A mesh of shape (data, fsdp, model); `data=-1` takes all devices not used by the other axes."""
    devices = list(devices if devices is not None else jax.devices())
    n = len(devices)
    fsdp, model = int(cfg.fsdp), int(cfg.model)
    if fsdp <= 0 or model <= 0:
        raise ConfigError(f"mesh.fsdp and mesh.model must be positive, got {fsdp} and {model}.")
    data = int(cfg.data)
    if data == -1:
        if n % (fsdp * model):
            raise ConfigError(f"{n} devices cannot be split into mesh.fsdp={fsdp} x mesh.model={model}.")
        data = n // (fsdp * model)
    if data * fsdp * model != n:
        raise ConfigError(
            f"mesh data={data} x fsdp={fsdp} x model={model} = {data * fsdp * model} devices, but {n} are "
            "available; set mesh.data=-1 to use all of them."
        )
    grid = np.asarray(devices).reshape(data, fsdp, model)
    return Mesh(grid, AXES, axis_types=(AxisType.Auto,) * 3)


def batch_size_per_process(global_batch: int, mesh: Mesh) -> int:
    """Checks that the global batch splits over the batch axes and the processes."""
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    if global_batch % shards:
        raise ConfigError(
            f"trainer.batch_size={global_batch} is not divisible by the {shards} devices of the mesh's batch "
            f"axes; use a multiple of {shards}."
        )
    if global_batch % jax.process_count():
        raise ConfigError(f"trainer.batch_size={global_batch} is not divisible by {jax.process_count()} processes.")
    return global_batch // jax.process_count()


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


# Parameters that are never split (small, or read whole by every device).
_NEVER_SPLIT = re.compile(r"(LayerNorm|layer_norm|ln|norm)", re.IGNORECASE)


def param_spec(path: str, shape: tuple[int, ...], mesh: Mesh) -> P:
    """The sharding rule for one parameter: matrices split over 'fsdp' then 'model' where divisible."""
    if len(shape) < 2 or _NEVER_SPLIT.search(path):
        return P()
    spec = [None] * len(shape)
    fsdp, model = mesh.shape["fsdp"], mesh.shape["model"]
    if model > 1 and shape[-1] % model == 0:
        spec[-1] = "model"
    if fsdp > 1:
        for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
            if spec[dim] is None and shape[dim] % fsdp == 0:
                spec[dim] = "fsdp"
                break
    return P(*spec)


def state_shardings(abstract_state, mesh: Mesh):
    """Shardings for the whole train state: parameter-shaped leaves follow `param_spec`, the rest replicate."""

    def rule(path, leaf):
        name = jax.tree_util.keystr(path)
        shape = getattr(leaf, "shape", ())
        if "params" in name or "opt_state" in name:
            return NamedSharding(mesh, param_spec(name, tuple(shape), mesh))
        return NamedSharding(mesh, P())

    return jax.tree_util.tree_map_with_path(rule, abstract_state)


def global_batch(local: dict[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
    """Assembles each process's share into global arrays sharded over the batch axes."""
    out = {}
    for key, value in local.items():
        global_shape = (value.shape[0] * jax.process_count(),) + value.shape[1:]
        out[key] = jax.make_array_from_process_local_data(sharding, value, global_shape)
    return out
