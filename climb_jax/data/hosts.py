"""Every process of a run must train on the same prepared data in the same order: checked before step 0.

Each process builds its batches alone (a pure function of seed, step and scores), so two hosts that
opened different prepared versions (another corpus, tokenizer or scorer) or hold different difficulty
orderings would train on silently inconsistent batches. Before the first step every process publishes
its dataset fingerprint and ordering id (`process_allgather`), and all of them stop with the same
one-line error, naming each disagreeing value, if any differs.
"""

from __future__ import annotations

import numpy as np

from climb_jax.errors import DataError

_WIDTH = 64 + 1 + 47  # a fingerprint (64 hex digits), a separator, an ordering id (version:digest)


def _encode(fingerprint: str, ordering: str) -> np.ndarray:
    text = f"{fingerprint[:64]}|{ordering[:47]}".ljust(_WIDTH)
    return np.frombuffer(text.encode("ascii", "replace"), np.uint8).copy()


def _decode(row: np.ndarray) -> tuple[str, str]:
    fingerprint, _, ordering = bytes(np.asarray(row, np.uint8)).decode("ascii", "replace").rstrip().partition("|")
    return fingerprint, ordering


def disagreement(values: list[tuple[str, str]]) -> str | None:
    """The error line for the processes' (fingerprint, ordering) pairs, or None if they all agree."""
    if len(set(values)) <= 1:
        return None
    fps = sorted({fp for fp, _ in values})
    if len(fps) > 1:
        who = "; ".join(f"process {i}: {fp[:16]}" for i, (fp, _) in enumerate(values))
        return (f"the processes opened different prepared datasets (fingerprints {' vs '.join(f[:16] for f in fps)}; "
                f"{who}). Start every host with the same config and data.prepared_dir (prepare once, then "
                "point all hosts at it).")
    who = "; ".join(f"process {i}: {o}" for i, (_, o) in enumerate(values))
    return (f"the processes hold different difficulty orderings of dataset {fps[0][:16]} ({who}). Start every "
            "host with the same data_curriculum settings and the same workdir (the checkpoint's scores).")


def check_hosts_agree(fingerprint: str, ordering: str = "") -> None:
    """Raises `DataError` on every process unless all processes have the same fingerprint and ordering.
    Called once the data is opened (before anything is compiled for the mesh) and again once the
    ordering is known (after a checkpoint's scores are restored)."""
    import jax

    if jax.process_count() == 1:
        return
    from jax.experimental import multihost_utils

    gathered = np.asarray(multihost_utils.process_allgather(_encode(fingerprint, ordering)))
    message = disagreement([_decode(r) for r in gathered.reshape(jax.process_count(), _WIDTH)])
    if message:
        raise DataError(message)
