"""Device mesh and sharding rules, in one place.

One code path for 1 CPU, 8 fake CPU devices, one GPU and multi-host TPU slices: a `Mesh` with axes
('data', 'fsdp', 'model'), batches sharded over ('data', 'fsdp'), parameters replicated, or split over
'fsdp' (their largest divisible dimension) and 'model' (the output dimension of large matrices).
"""

from __future__ import annotations

import math
import os
import re

import jax
import numpy as np
from absl import logging
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P
from ml_collections import ConfigDict

from climb_jax.errors import ConfigError

AXES = ("data", "fsdp", "model")
BATCH_AXES = ("data", "fsdp")


def _backend_started() -> bool:
    from jax._src import xla_bridge  # no public API tells whether JAX's backends have started

    return xla_bridge.backends_are_initialized()


def skip_absent_tpu() -> None:
    """Chooses the CPU before JAX starts where libtpu is installed but this host has no TPU chip and
    no GPU plugin is installed.

    Why: the pre-flight (`python -m climb_jax.aot`) needs libtpu on the machine that plans a run, and
    with libtpu installed JAX starts the TPU runtime on any host, which prints several lines of
    start-up errors (unknown accelerator type, worker host names) before it falls back to the CPU.
    `JAX_PLATFORMS` (or `jax_platforms`), when set, decides instead. Every command line that runs JAX
    calls this first."""
    import importlib.metadata
    import importlib.util

    if os.environ.get("JAX_PLATFORMS") or jax.config.jax_platforms or _backend_started():
        return
    if importlib.util.find_spec("libtpu") is None:
        return
    from jax._src import hardware_utils  # JAX's own test, the one that decides whether a TPU is here

    if hardware_utils.num_available_tpu_chips_and_device_id()[0] > 0:
        return
    if importlib.util.find_spec("jax_plugins") is not None or importlib.metadata.entry_points(group="jax_plugins"):
        return  # a GPU plugin: let JAX choose
    jax.config.update("jax_platforms", "cpu")


def cpu_device_count(requested: int) -> int:
    """`mesh.cpu_devices`: 1 keeps JAX's single CPU device; 0 means one device per usable core; n > 1 is n."""
    if requested < 0:
        raise ConfigError(f"mesh.cpu_devices must be 0 (one per core) or a positive count, got {requested}.")
    if requested:
        return requested
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def configure_cpu_devices(requested: int) -> None:
    """Splits the host CPU into several XLA devices, before JAX starts.

    Why: XLA runs a device's element-wise kernels on one thread, so on a multi-core CPU one device
    leaves cores idle for a third of a train step; data parallelism over one device per core keeps
    them busy (see benchmarks/README.md). Losses match the single-device run to float tolerance
    (tests/test_scale_out.py). A no-op for 1, and when `XLA_FLAGS` already forces a device count.
    """
    n = cpu_device_count(requested)
    if n == 1 or "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", ""):
        return
    if _backend_started():
        current = len(jax.devices("cpu"))
        if current != n:
            raise ConfigError(
                f"mesh.cpu_devices={requested} asks for {n} CPU devices, but JAX already started with {current}; "
                f"set it before JAX's first operation (JAX_NUM_CPU_DEVICES={n} in the environment does the same)."
            )
        return
    jax.config.update("jax_num_cpu_devices", n)


_DISTRIBUTED_STARTED = False


def setup_runtime(config: ConfigDict) -> None:
    """What must happen before JAX's first operation: multi-host start-up and the CPU device count.
    Idempotent, so both the CLI and `Trainer` call it."""
    skip_absent_tpu()
    maybe_initialize_distributed(config.distributed)
    configure_cpu_devices(int(config.mesh.get("cpu_devices", 1)))


def maybe_initialize_distributed(cfg: ConfigDict) -> None:
    """`jax.distributed.initialize` for multi-host runs (Cloud TPU fills in the arguments itself)."""
    global _DISTRIBUTED_STARTED
    if not cfg.initialize or _DISTRIBUTED_STARTED:
        return
    _DISTRIBUTED_STARTED = True
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


class Placement:
    """Puts parameters and batches on a mesh: the one placement rule for training, evaluation and
    fine-tuning.

    Parameters keep a sharding they already have on this mesh (so a train state's split or replicated
    leaves are used in place, with no gather to one device) and are otherwise replicated; a batch is
    split over the batch axes. Without a mesh, everything goes to the default device once, so host
    (numpy) arrays are not copied again at every call.
    """

    def __init__(self, mesh: Mesh | None, batch_sizes=(), what: str = "batch size"):
        self.mesh = mesh
        self.shards = 1
        if mesh is None:
            return
        axes = tuple(a for a in BATCH_AXES if a in mesh.shape)
        if not axes:
            raise ConfigError(f"the mesh has no batch axis (axes: {', '.join(mesh.axis_names)}); "
                              "build it with climb_jax.parallel.mesh.create_mesh.")
        self.shards = math.prod(mesh.shape[a] for a in axes)
        for b in batch_sizes:
            if b % self.shards:
                raise ConfigError(f"{what} {b} is not divisible by the {self.shards} devices of the mesh's batch "
                                  f"axes; use a multiple of {self.shards}.")
        self.batch_sharding = NamedSharding(mesh, P(axes))
        self.replicated = NamedSharding(mesh, P())

    def params(self, tree):
        """Parameters (or any state) on the mesh: leaves already on it stay as they are."""
        if self.mesh is None:
            return jax.device_put(tree)

        def place(leaf):
            sharding = getattr(leaf, "sharding", None)
            if isinstance(sharding, NamedSharding) and sharding.mesh == self.mesh:
                return leaf
            return jax.device_put(np.asarray(leaf), self.replicated)

        return jax.tree_util.tree_map(place, tree)

    def batch(self, tree):
        """A batch every process holds whole (deterministic evaluation data): each device takes its slice."""
        if self.mesh is None:
            return tree

        def put(x):
            x = np.asarray(x)
            return jax.make_array_from_callback(x.shape, self.batch_sharding, lambda index: x[index])

        return jax.tree_util.tree_map(put, tree)
