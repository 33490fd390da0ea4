"""URI locations (`--workdir=gs://...`, `data.corpus=gs://...`): a missing file-system package, an
unknown scheme, an unreachable or missing bucket are one clear error before a run starts."""

import importlib
import subprocess
import sys
from pathlib import Path

import pytest
from fsspec.spec import AbstractFileSystem

from climb_jax import uri
from climb_jax.errors import ClimbError, DataError

registry = importlib.import_module("fsspec.registry")  # the module (`fsspec.registry` is also a mapping)


def test_local_paths_are_not_checked(tmp_path):
    assert not uri.is_uri(tmp_path) and uri.is_uri("gs://b/x")
    uri.check(str(tmp_path / "not" / "there"), "--workdir")  # local: created later by the run itself


def test_an_unknown_scheme_names_the_usable_ones():
    with pytest.raises(ClimbError, match=r"--workdir='ftp://host/run': 'ftp://' is not a location .*gs://, s3://, az://"):
        uri.check("ftp://host/run", "--workdir")


def test_a_missing_file_system_package_is_named_with_its_install_command(monkeypatch):
    monkeypatch.setitem(registry.known_implementations, "s3",
                        {"class": "no_such_fs_package.S3FileSystem", "err": "Install no_such_fs_package"})
    monkeypatch.delitem(registry._registry, "s3", raising=False)
    with pytest.raises(DataError, match=r"data.corpus='s3://b/babylm' needs the no_such_fs_package package to reach "
                                        r"s3:// \(pip install no_such_fs_package\)"):
        uri.check("s3://b/babylm", "data.corpus", DataError)


class _Bucket(AbstractFileSystem):
    """A stand-in object store: `state` says whether the bucket answers, is missing, or the network is down."""
    protocol = "az"
    state = "up"

    def __init__(self, *args, **kwargs):
        super().__init__()

    def info(self, path, **kwargs):
        if _Bucket.state == "down":
            raise ConnectionError("Cannot connect to host store.example:443")
        if _Bucket.state == "missing":
            raise FileNotFoundError(path)
        return {"name": path, "size": 0, "type": "directory"}


@pytest.fixture
def fake_store(monkeypatch):
    monkeypatch.setitem(registry._registry, "az", _Bucket)
    return _Bucket


@pytest.mark.parametrize("state, message", [
    ("down", r"cannot reach --workdir='az://bucket/runs/x': ConnectionError: Cannot connect to host store.example:443\. "
             r"Check the network, the bucket name and this host's credentials for az://bucket"),
    ("missing", r"--workdir='az://bucket/runs/x': the bucket az://bucket does not exist or these credentials cannot "
                r"see it; create it first"),
])
def test_an_unreachable_or_missing_bucket_is_one_error(fake_store, monkeypatch, state, message):
    monkeypatch.setattr(fake_store, "state", state)
    with pytest.raises(ClimbError, match=message):
        uri.check("az://bucket/runs/x", "--workdir")
    monkeypatch.setattr(fake_store, "state", "up")
    uri.check("az://bucket/runs/x", "--workdir")  # and a bucket that answers passes


def test_main_refuses_a_workdir_it_cannot_write_before_any_work():
    """The file system is checked before the config is even validated into a run: exit 2, one line."""
    r = subprocess.run([sys.executable, "-m", "climb_jax.main", "--config=configs/vanilla.py:smoke",
                        "--workdir=ftp://host/run"], capture_output=True, text=True, timeout=120,
                       cwd=Path(__file__).resolve().parents[1])
    assert r.returncode == 2, r.stderr[-2000:]
    assert r.stderr.strip().splitlines()[-1].startswith("error: --workdir='ftp://host/run': 'ftp://' is not a location")
    assert "Traceback" not in r.stderr and "devices:" not in r.stdout
