"""Checkpoints with orbax: the train state, the data sampler's position and scores, and run metadata.

Saves are atomic (orbax writes into a temporary directory and renames it when complete), so a run
killed mid-save leaves the previous checkpoint intact, and asynchronous: orbax copies the state and
writes it in the background while training goes on. Every save records a digest of each state leaf in
its metadata, computed on the devices where the state lives (`state_digests`), so the check never
copies the state to the host, and works for a state sharded over many hosts; on restore, a checkpoint
that cannot be read (truncated files) or whose contents no longer match those digests (flipped bits
that still decode) is reported and the next older one is tried. Nothing is deleted: when training reaches the step of such a checkpoint again, the bad one is
moved to `<checkpoints>.unreadable/` before the new one is written. A checkpoint whose shapes do not
fit the current config (a changed vocabulary or model size) is a configuration mistake, not damage:
it stops the run with a message instead of falling back. A failed write (a full disk) is reported
with the step that is still usable.
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import json
import sys
import traceback
import warnings
import zlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from ml_collections import ConfigDict

from climb_jax.errors import CheckpointError, quiet_logger


class Checkpointer:
    """A thin wrapper over `ocp.CheckpointManager` with fallback to older steps on a bad checkpoint."""

    def __init__(self, directory, keep: int | None = 3, async_save: bool = True, prefix: str | None = None):
        """`keep`: how many of the latest checkpoints to keep (None: all). `prefix`: step folders are named
        `<prefix>_<step>` instead of `<step>` (for a folder that must not be mistaken for the run's own)."""
        self.directory = epath.Path(directory)
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, step_prefix=prefix,
                                               enable_async_checkpointing=async_save)
        self.manager = ocp.CheckpointManager(self.directory, options=options)
        _silence_abandoned_writes()
        self._unreadable: set[int] = set()
        self._pending: int | None = None

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def save(self, step: int, state, meta: dict, host: dict[str, np.ndarray] | None = None) -> None:
        self._wait(self._pending)  # a failed earlier (asynchronous) save is reported with its own step
        if step in self._unreadable:
            self._move_aside(step)
        meta = dict(meta, digests=state_digests(state))  # a few bytes per leaf come to the host
        items = dict(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
        if host:
            items["host"] = ocp.args.StandardSave(host)
        self._pending = step
        try:
            self.manager.save(step, args=ocp.args.Composite(**items), force=True)
        except Exception as e:  # noqa: BLE001 - classified by _write_error
            raise self._write_error(step, e) from None

    def _wait(self, step: int | None) -> None:
        try:
            self.manager.wait_until_finished()
        except Exception as e:  # noqa: BLE001 - classified by _write_error
            raise self._write_error(step, e) from None
        self._pending = None

    def _write_error(self, step: int | None, e: Exception) -> Exception:
        """A `CheckpointError` for a failed write (full disk, no permission), else `e` unchanged."""
        text = str(e)
        if not (isinstance(e, OSError) or "os_error_code" in text or "RESOURCE_EXHAUSTED" in text):
            return e
        if getattr(e, "errno", None) == errno.ENOSPC or "No space left on device" in text:
            why = "No space left on device (the disk is full)"
        else:
            why = text.splitlines()[0][:300]
        self.manager.reload()
        kept = [s for s in self.all_steps() if step is None or s < step]
        what = f"the checkpoint of step {step}" if step is not None else "a checkpoint"
        return CheckpointError(
            f"could not write {what} to {self.directory}: {why}. "
            + (f"The checkpoint of step {kept[-1]} is complete and kept; free space (or choose another --workdir) "
               "and rerun the same command to resume from it." if kept else
               "No earlier checkpoint exists; free space (or choose another --workdir) and rerun.")
        )

    def _move_aside(self, step: int) -> None:
        """Moves a checkpoint found unreadable out of orbax's directory, so a new one of the same step can be
        written; the old files are kept for inspection."""
        root = self.directory.parent / f"{self.directory.name}.unreadable"
        if jax.process_index() == 0:  # one process moves it; the others wait below
            root.mkdir(parents=True, exist_ok=True)
            dest, i = root / str(step), 1
            while dest.exists():
                dest, i = root / f"{step}-{i}", i + 1
            (self.directory / str(step)).rename(dest)
            print(f"moved the unreadable checkpoint of step {step} to {dest} (kept for inspection)", flush=True)
        if jax.process_count() > 1:
            ocp.multihost.sync_global_processes(f"climb_jax_move_aside_{step}")
        self.manager.reload()
        self._unreadable.discard(step)

    def restore(self, step: int, abstract_state, with_host: bool = False):
        items = dict(state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore())
        if with_host:
            items["host"] = ocp.args.StandardRestore()
        out = self.manager.restore(step, args=ocp.args.Composite(**items))
        _verify_checksums(out["state"], out["meta"], step)
        return out["state"], out["meta"], (out["host"] if with_host else None)

    def has_host(self, step: int) -> bool:
        return (self.directory / str(step) / "host").exists()

    def restore_latest(self, abstract_state):
        """(state, meta, host, step) of the newest readable checkpoint, or None when there is none."""
        self._wait(self._pending)
        steps = self.all_steps()
        for step in reversed(steps):
            # Shapes first, from the metadata alone: a restore that fails on a shape abandons orbax's reads
            # of the other arrays, whose coroutines then print tracebacks when they are garbage-collected.
            mismatch = self._shape_mismatch(step, abstract_state)
            if mismatch:
                raise CheckpointError(
                    f"the checkpoint of step {step} in {self.directory} does not fit this run's config: "
                    f"{mismatch}. The model or data settings (data.vocab_size, the corpus, model.*, the "
                    "objective units) changed since it was written. Rerun with the settings the run was "
                    "started with (its config.json), or choose a new --workdir."
                )
            try:
                state, meta, host = self.restore(step, abstract_state, with_host=self.has_host(step))
                _check_finite(state, step)
                return state, meta, host, step
            except Exception as e:  # noqa: BLE001 - any failure to read means "do not use this one"
                self._unreadable.add(step)
                logging.warning("checkpoint at step %d in %s cannot be restored (%s: %s); trying an older one",
                                step, self.directory, type(e).__name__, str(e).splitlines()[0][:300])
                print(f"warning: checkpoint at step {step} is unreadable ({type(e).__name__}: "
                      f"{str(e).splitlines()[0][:200] if str(e) else '-'}); "
                      "falling back to an older checkpoint", flush=True)
        if steps:
            raise CheckpointError(
                f"none of the checkpoints in {self.directory} (steps {steps}) can be restored. They are kept "
                "as they are; move them away to start the run from scratch."
            )
        return None

    def _shape_mismatch(self, step: int, abstract_state) -> str:
        """What differs between the saved state's shapes and this config's ("" if they agree or the
        checkpoint's metadata cannot be read, i.e. the checkpoint is damaged rather than different)."""
        try:
            # Reading one item's metadata outside its manager makes orbax warn that the step's metadata
            # file is not in the item's folder (it is one level up): true, and nothing to act on.
            with warnings.catch_warnings(), quiet_logger("absl"), ocp.StandardCheckpointer() as reader:
                warnings.simplefilter("ignore")
                saved = reader.metadata(self.directory / str(step) / "state").item_metadata
            saved_shapes = {_path_name(p): tuple(x.shape) for p, x in jax.tree_util.tree_leaves_with_path(saved)
                            if getattr(x, "shape", None) is not None}
        except Exception:  # noqa: BLE001 - unreadable metadata: damage, handled by the caller
            return ""
        want = {_path_name(p): tuple(x.shape) for p, x in jax.tree_util.tree_leaves_with_path(abstract_state)}
        if not saved_shapes:
            return ""
        only = sorted(set(want) ^ set(saved_shapes))
        if only:
            return (f"{len(only)} state entries exist in only one of them (e.g. {only[0]}: "
                    f"{'in the checkpoint' if only[0] in saved_shapes else 'in this config'} only)")
        diff = [k for k in want if want[k] != saved_shapes[k]]
        if not diff:
            return ""
        emb = next((k for k in diff if k.endswith("word_embeddings/embedding")), None)
        if emb is not None:
            return (f"its vocabulary has {saved_shapes[emb][0]} tokens but the tokenizer of this run has "
                    f"{want[emb][0]}")
        return f"{diff[0]} is {saved_shapes[diff[0]]} in the checkpoint and {want[diff[0]]} in this config"

    def delete(self, step: int) -> None:
        self._wait(self._pending)
        self.manager.delete(step)

    def wait(self) -> None:
        self._wait(self._pending)

    def close(self) -> None:
        self._wait(self._pending)
        self.manager.close()


def to_lists(items: list[dict]) -> list[dict]:
    """Per-step dicts of arrays (nested dicts too) as JSON lists, for a checkpoint's metadata."""
    def plain(v):
        return {k: plain(x) for k, x in v.items()} if isinstance(v, dict) else np.asarray(v).tolist()

    return [plain(d) for d in items]


def from_lists(items: list[dict]) -> list[dict]:
    """The inverse of `to_lists`: row indices and source ids as int64, every other value float32."""
    def arrays(d):
        return {k: arrays(v) if isinstance(v, dict) else
                np.asarray(v, np.int64 if k in ("source_ids", "index") else np.float32) for k, v in d.items()}

    return [arrays(d) for d in items]


def _path_name(path) -> str:
    """'params/encoder/...' for any pytree key path (dict keys, attributes, sequence indices)."""
    parts = []
    for k in path:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
    return "/".join(parts)


def _words(x) -> jax.Array:
    """A leaf's bits as uint32 words, flat: 4-byte types bitcast, narrower ones widened, 8-byte ones split."""
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    if x.dtype == jnp.bool_:
        return x.astype(jnp.uint32).ravel()
    unsigned = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint32}[x.dtype.itemsize]
    return jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32).ravel()


def _leaf_digest(x) -> jax.Array:
    """uint32 [2]: the sum of the leaf's words and their sum weighted by odd position factors, modulo 2^32.
    A single flipped bit changes both; the weights make moved words count too. Integer sums wrap
    exactly, so the result does not depend on how the leaf is sharded or in what order it is reduced."""
    w = _words(x)
    odd = 2 * jax.lax.iota(jnp.uint32, w.size) + 1
    return jnp.stack([jnp.sum(w, dtype=jnp.uint32), jnp.sum(w * odd, dtype=jnp.uint32)])


@functools.lru_cache(maxsize=None)
def _digest_fn(out_sharding):
    """The jitted `_leaf_digest`, one per output sharding. One leaf per call: jit compiles it once per
    leaf shape (a few dozen small programs), where one program over every leaf took XLA's CPU compiler
    minutes; the calls are dispatched together and fetched once."""
    return jax.jit(_leaf_digest, out_shardings=out_sharding)


def _replicated(leaves):
    """A sharding that puts the (tiny) digests on every device of the state's mesh, so each process
    reads them locally; None (jit's choice) for a state that is not on a mesh."""
    for x in leaves:
        mesh = getattr(getattr(x, "sharding", None), "mesh", None)
        if isinstance(mesh, jax.sharding.Mesh):
            return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    return None


def state_digests(state) -> dict[str, list[int]]:
    """Two 32-bit sums of every leaf's bits (`_leaf_digest`), by path. Computed by one jitted function
    where the state lives; only 8 bytes per leaf are fetched, so a save waits for the step that made
    the state (as orbax's own copy does) but never for a host copy of the whole state."""
    leaves = jax.tree_util.tree_leaves_with_path(state)
    digest = _digest_fn(_replicated([x for _, x in leaves]))
    values = jax.device_get([digest(x) for _, x in leaves])
    return {_path_name(p): [int(v[0]), int(v[1])] for (p, _), v in zip(leaves, values)}


def _crc32s(state) -> dict[str, int] | None:
    """CRC32 of every leaf's bytes: what checkpoints written before `state_digests` recorded (as
    `checksums`); still checked when one of those is restored. None for a multi-host sharded state."""
    leaves = jax.tree_util.tree_leaves_with_path(state)
    if not all(getattr(x, "is_fully_addressable", True) for _, x in leaves):
        return None
    values = jax.device_get([x for _, x in leaves])
    return {_path_name(p): zlib.crc32(np.ascontiguousarray(v).view(np.uint8)) for (p, _), v in zip(leaves, values)}


def _verify_checksums(state, meta: dict, step: int) -> None:
    meta = meta or {}
    if meta.get("digests"):
        recorded, now = meta["digests"], state_digests(state)
    elif meta.get("checksums"):
        recorded, now = meta["checksums"], _crc32s(state)
    else:
        return  # written before checkpoints recorded either
    if now is None:
        return
    bad = sorted(k for k in recorded if now.get(k) != recorded[k])
    if bad or set(now) != set(recorded):
        raise CheckpointError(f"checkpoint {step}: {bad[0] if bad else 'the state'} does not match the digest "
                              "recorded when it was saved (its files were changed or damaged)")


def _check_finite(state, step: int) -> None:
    leaves = jax.tree_util.tree_leaves(state.params)
    if not all(bool(np.isfinite(np.asarray(x)).all()) for x in leaves):
        raise CheckpointError(f"checkpoint {step} holds non-finite parameters")


# --------------------------------------------------------------------------------------------
# Loading a finished (or running) run for evaluation, export and fine-tuning.


@dataclasses.dataclass
class LoadedRun:
    config: ConfigDict
    params: dict
    step: int
    model_config: Any  # RobertaConfig
    tokenizer: Any  # PreTrainedTokenizerFast
    workdir: str


def read_config(workdir) -> ConfigDict:
    path = epath.Path(workdir) / "config.json"
    if not path.exists():
        raise CheckpointError(f"{workdir} is not a training run: it has no config.json. Point --workdir at a "
                              "directory written by `python -m climb_jax.main`.")
    return ConfigDict(json.loads(path.read_text()))


def load_run(workdir: str, step: int | None = None) -> LoadedRun:
    """The parameters of a run's latest (or given) checkpoint, with its config and tokenizer."""
    from climb_jax.data.dataset import load_tokenizer
    from climb_jax.train.setup import RunSetup

    root = epath.Path(workdir)
    config = read_config(root)
    tok_dir = root / "tokenizer"
    if not tok_dir.exists():
        raise CheckpointError(f"{workdir} has no tokenizer/ folder; the run did not finish its data preparation.")
    tokenizer = load_tokenizer(tok_dir)
    setup = RunSetup.from_config(config, vocab_size=len(tokenizer))
    ckpt_dir = root / "checkpoints"
    if not ckpt_dir.exists():
        raise CheckpointError(f"{workdir} has no checkpoints/ yet; train first or wait for the first save.")
    ckpt = Checkpointer(ckpt_dir, keep=max(int(config.trainer.keep_checkpoints), 1), async_save=False)
    abstract = setup.abstract_state(jax.sharding.SingleDeviceSharding(jax.devices()[0]))
    if step is None:
        found = ckpt.restore_latest(abstract)
        if found is None:
            raise CheckpointError(f"{workdir}/checkpoints holds no checkpoint yet.")
        state, _, _, step = found
    else:
        if step not in ckpt.all_steps():
            raise CheckpointError(f"{workdir} has no checkpoint at step {step}; available: {ckpt.all_steps()}.")
        state, _, _ = ckpt.restore(step, abstract)
    ckpt.close()
    return LoadedRun(config=config, params=state.params, step=int(step), model_config=setup.model,
                     tokenizer=tokenizer, workdir=str(workdir))


def _is_abandoned_write_callback(unraisable) -> bool:
    """True for the error a tensorstore write finishing after orbax gave up its save raises: its
    completion callback posts to the save's event loop, which is already closed."""
    exc = unraisable.exc_value
    if not isinstance(exc, RuntimeError) or str(exc) != "Event loop is closed":
        return False
    names = [frame.name for frame in traceback.extract_tb(unraisable.exc_traceback)]
    return names[-2:] == ["call_soon_threadsafe", "_check_closed"]


def _silence_abandoned_writes() -> None:
    """When one write of an asynchronous save fails (a full disk), orbax abandons the save, but its
    other writes still complete in tensorstore's threads, and each completion reports an 'Event loop
    is closed' traceback (over a hundred on a full disk) that buries the message saying what to do.
    Only that exact error is dropped; the failure itself is reported by `_write_error`."""
    hook = sys.unraisablehook
    if getattr(hook, "_climb_filter", False):
        return

    def unraisablehook(unraisable):
        if not _is_abandoned_write_callback(unraisable):
            hook(unraisable)

    unraisablehook._climb_filter = True  # type: ignore[attr-defined]
    sys.unraisablehook = unraisablehook
