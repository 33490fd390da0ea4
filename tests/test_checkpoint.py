"""Checkpoint integrity: digests computed where the state lives, and the fallback past a damaged checkpoint.

The end-to-end fault runs (a corrupted latest checkpoint through the command line) are in
test_faults.py; these are the same guarantees on a bare `Checkpointer`, in seconds.
"""

from __future__ import annotations

import json
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from climb_jax.train import checkpoint as ckpt_lib
from climb_jax.train.checkpoint import Checkpointer, state_digests
from climb_jax.train.state import TrainState


def _reference_digest(x: np.ndarray) -> list[int]:
    """The digest by hand on the host: the leaf's bits as uint32 words (narrow types widened), their sum
    and their sum weighted by 1, 3, 5, ..., modulo 2^32."""
    x = np.asarray(x)
    unsigned = {1: np.uint8, 2: np.uint16, 4: np.uint32}[x.dtype.itemsize]
    w = x.view(unsigned).astype(np.uint64).ravel()
    odd = 2 * np.arange(w.size, dtype=np.uint64) + 1
    return [int(w.sum() % 2**32), int((w * odd % 2**32).sum() % 2**32)]


def _leaves():
    rng = np.random.default_rng(0)
    return {
        "f32": jnp.asarray(rng.normal(size=(33, 7)), jnp.float32),
        "bf16": jnp.asarray(rng.normal(size=(5, 9)), jnp.bfloat16),
        "i32": jnp.asarray(rng.integers(-9, 9, size=(4,)), jnp.int32),
        "key": jnp.asarray([123, 456], jnp.uint32),
        "i8": jnp.asarray(rng.integers(-9, 9, size=(6,)), jnp.int8),
        "flag": jnp.asarray([True, False, True]),
    }


def _state(step: int = 7) -> TrainState:
    leaves = _leaves()
    return TrainState(step=jnp.asarray(step, jnp.int32), params={k: leaves[k] for k in ("f32", "bf16")},
                      opt_state={k: leaves[k] for k in ("i32", "i8", "flag")}, rng=leaves["key"])


def test_digests_match_a_host_reference_and_see_one_flipped_bit_or_moved_word():
    state = _leaves()
    digests = state_digests(state)
    for name, x in state.items():
        host = np.asarray(x).astype(np.uint8) if x.dtype == jnp.bool_ else np.asarray(x)
        assert digests[name] == _reference_digest(host), name
    for name, x in state.items():  # one bit flipped, anywhere: both sums change
        host = np.array(x)
        if host.dtype == np.bool_:
            host[1] = ~host[1]
        else:
            view = host.reshape(-1).view(np.uint8)
            view[view.size // 2] ^= 0x04
        changed = state_digests({**state, name: jnp.asarray(host)})[name]
        assert changed[0] != digests[name][0] and changed[1] != digests[name][1], name
    swapped = np.array(state["f32"])
    swapped[[0, 1]] = swapped[[1, 0]]  # the same words, moved: the plain sum is blind, the weighted one is not
    moved = state_digests({**state, "f32": jnp.asarray(swapped)})["f32"]
    assert moved[0] == digests["f32"][0] and moved[1] != digests["f32"][1]


def test_a_save_fetches_digests_not_the_state(tmp_path, monkeypatch):
    """The integrity check brings 8 bytes per leaf to the host, never the state's arrays."""
    state = {"big": jnp.ones((256, 256), jnp.float32), "small": jnp.zeros((3,), jnp.int32)}
    fetched = []
    real = jax.device_get

    def recording(tree):
        fetched.extend(np.asarray(x).nbytes for x in jax.tree_util.tree_leaves(tree))
        return real(tree)

    monkeypatch.setattr(ckpt_lib.jax, "device_get", recording)
    ckpt = Checkpointer(tmp_path / "checkpoints", async_save=True)
    ckpt.save(1, state, {"step": 1})
    monkeypatch.setattr(ckpt_lib.jax, "device_get", real)
    ckpt.close()
    assert fetched and max(fetched) <= 8, fetched


def _meta_path(directory, step: int):
    return directory / str(step) / "meta" / "metadata"


def _two_checkpoints(tmp_path):
    directory = tmp_path / "checkpoints"
    ckpt = Checkpointer(directory, keep=None, async_save=False)
    older, newer = _state(7), _state(8)
    ckpt.save(1, older, {"step": 1})
    ckpt.save(2, newer, {"step": 2})
    ckpt.close()
    abstract = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), older)
    return directory, abstract


def _restore_latest(directory, abstract):
    reader = Checkpointer(directory, keep=None, async_save=False)
    state, meta, _, step = reader.restore_latest(abstract)
    reader.close()
    return state, meta, step


def test_restore_checks_the_digests_and_falls_back(tmp_path, capsys):
    directory, abstract = _two_checkpoints(tmp_path)
    state, meta, step = _restore_latest(directory, abstract)
    assert step == 2 and int(state.step) == 8 and meta["digests"] == state_digests(state)
    # Contents that decode but differ from what was saved (here: the record of them): the older one is used.
    meta = json.loads(_meta_path(directory, 2).read_text())
    meta["digests"]["params/f32"][1] ^= 1
    _meta_path(directory, 2).write_text(json.dumps(meta))
    state, _, step = _restore_latest(directory, abstract)
    assert step == 1 and int(state.step) == 7
    out = capsys.readouterr().out
    assert "checkpoint at step 2 is unreadable" in out and "params/f32 does not match the digest" in out
    assert (directory / "2").exists()  # kept


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_damaged_state_files_fall_back_to_the_previous_checkpoint(tmp_path, capsys, damage):
    directory, abstract = _two_checkpoints(tmp_path)
    files = sorted((p for p in (directory / "2" / "state").rglob("*") if p.is_file()), key=lambda p: -p.stat().st_size)
    data = bytearray(files[0].read_bytes())
    if damage == "flip":
        for i in np.random.default_rng(1).integers(len(data) // 4, len(data) - 16, 3):
            data[i] ^= 0x10
    else:
        data = data[: len(data) // 3]
    files[0].write_bytes(bytes(data))
    state, _, step = _restore_latest(directory, abstract)
    assert step == 1 and int(state.step) == 7
    assert "checkpoint at step 2 is unreadable" in capsys.readouterr().out


def test_checkpoints_with_crc32_checksums_still_restore_and_are_checked(tmp_path):
    """Checkpoints written before the digests recorded CRC32s of the host bytes (`checksums`)."""
    directory, abstract = _two_checkpoints(tmp_path)
    for step, state in ((1, _state(7)), (2, _state(8))):
        meta = json.loads(_meta_path(directory, step).read_text())
        del meta["digests"]
        meta["checksums"] = {ckpt_lib._path_name(p): zlib.crc32(np.ascontiguousarray(np.asarray(v)).view(np.uint8))
                             for p, v in jax.tree_util.tree_leaves_with_path(state)}
        _meta_path(directory, step).write_text(json.dumps(meta))
    assert _restore_latest(directory, abstract)[2] == 2
    meta = json.loads(_meta_path(directory, 2).read_text())
    meta["checksums"]["params/f32"] ^= 1
    _meta_path(directory, 2).write_text(json.dumps(meta))
    assert _restore_latest(directory, abstract)[2] == 1
