"""Output to a reader that went away (`climb_jax.console`), and the workdir lock a finished run removes.

The end-to-end case (a signal to a run writing into a dead pipe) is in `test_signals.py`; here the parts,
in-process and in milliseconds."""

from __future__ import annotations

import io
import os

import pytest

from climb_jax import console
from climb_jax.errors import ClimbError
from climb_jax.train.workdir import WorkdirLock


@pytest.fixture()
def dead_pipe():
    """The write end of a pipe whose reader has exited, as a buffered text stream."""
    read, write = os.pipe()
    os.close(read)
    stream = io.TextIOWrapper(io.BufferedWriter(io.FileIO(write, "w")), encoding="utf-8")
    yield stream, write
    stream.close()


def test_a_dead_reader_makes_writes_vanish_not_fail(dead_pipe):
    stream, fd = dead_pipe
    with pytest.raises(BrokenPipeError):  # what print() meets without the guard
        stream.write("step 5/40\n")
        stream.flush()
    guarded = console.GuardedStream(stream)
    print("saved a checkpoint at step 6", file=guarded, flush=True)
    guarded.flush()
    assert os.path.samestat(os.fstat(fd), os.stat(os.devnull))  # the descriptor now discards
    assert guarded.fileno() == fd and guarded.encoding == "utf-8"  # the rest is the stream's own


def test_raw_writes_to_a_dead_reader_are_dropped():
    read, write = os.pipe()
    os.close(read)
    try:
        console.write_fd(write, b"SIGINT received\n")
        assert os.path.samestat(os.fstat(write), os.stat(os.devnull))
        os.write(write, b"later writes are discarded too\n")
    finally:
        os.close(write)


def test_other_write_errors_are_not_hidden():
    class Full(io.StringIO):
        def write(self, text):
            raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        console.GuardedStream(Full()).write("x")


def test_a_released_workdir_lock_leaves_no_file(tmp_path):
    lock = WorkdirLock(tmp_path).acquire()
    assert (tmp_path / ".lock").read_text() == str(os.getpid())
    with pytest.raises(ClimbError, match=rf"another run \(pid {os.getpid()}\) is using workdir {tmp_path}"):
        WorkdirLock(tmp_path).acquire()
    lock.release()
    assert not (tmp_path / ".lock").exists()
    WorkdirLock(tmp_path).acquire().release()  # free again
