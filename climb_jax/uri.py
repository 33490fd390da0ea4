"""Locations given as URIs (`--workdir=gs://bucket/runs/x`, `data.corpus=gs://bucket/babylm`).

`etils.epath` reads and writes them through `fsspec`, whose file system for a scheme is a separate
package (`gcsfs` for gs://, `s3fs` for s3://, `adlfs` for az://); without it the first write fails deep
inside orbax with a traceback, and with it a wrong bucket name or missing credentials fail the same
way after a minute of retries. `check` finds both before a run starts and says what to fix in one
line: the package is looked up without touching the network, then the bucket is asked once whether
it exists.
"""

from __future__ import annotations

from climb_jax.errors import ClimbError, quiet_logger

# The URI schemes etils.epath opens (it reads `hf://` too, but a corpus names the Hub as `hf:<dataset>`).
SCHEMES = ("gs", "s3", "az")


def is_uri(spec: object) -> bool:
    """`gs://...`, `s3://...`: not a local path."""
    return "://" in str(spec)


def scheme(spec: object) -> str:
    return str(spec).split("://", 1)[0]


def _package(scheme_: str) -> str:
    """The package fsspec takes `scheme_`'s file system from (`gcsfs` for gs)."""
    from fsspec.registry import known_implementations

    return known_implementations.get(scheme_, {}).get("class", scheme_).split(".")[0]


def require_filesystem(spec: str, what: str, error: type[ClimbError] = ClimbError) -> None:
    """The fsspec package for `spec`'s scheme is importable; otherwise an `error` naming it."""
    s = scheme(spec)
    if s not in SCHEMES:
        raise error(f"{what}='{spec}': '{s}://' is not a location this project can use; give a local path or "
                    f"a {', '.join(f'{x}://' for x in SCHEMES)} URI.")
    import fsspec

    try:
        fsspec.get_filesystem_class(s)
    except ImportError:
        package = _package(s)
        raise error(f"{what}='{spec}' needs the {package} package to reach {s}:// (pip install {package}), "
                    "and credentials on every host.") from None


def check(spec: str, what: str, error: type[ClimbError] = ClimbError) -> None:
    """A URI's file system is installed and its bucket answers; a local path is left to its users."""
    if not is_uri(spec):
        return
    require_filesystem(spec, what, error)
    from etils import epath

    s, rest = str(spec).split("://", 1)
    bucket = f"{s}://{rest.split('/', 1)[0]}"
    try:
        # The file system logs each retry with its traceback before giving up; the error below says it once.
        with quiet_logger(_package(s)):
            epath.Path(bucket).stat()  # not `exists()`, which some file systems answer False for any failure
    except FileNotFoundError:
        raise error(f"{what}='{spec}': the bucket {bucket} does not exist or these credentials cannot see it; "
                    "create it first (gs://: `gcloud storage buckets create`) or fix the name.") from None
    except Exception as e:  # noqa: BLE001 - network, permissions, credentials: the library's own words follow
        raise error(f"cannot reach {what}='{spec}': {type(e).__name__}: {e}. Check the network, the bucket name "
                    f"and this host's credentials for {bucket} (gs://: `gcloud auth application-default login`, "
                    "or on a VM a service account with roles/storage.objectAdmin on the bucket).") from None
