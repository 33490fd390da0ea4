"""Which checkpoint the final evaluation scores (`eval.select`).

The reference measures dev pseudo-perplexity (mean and standard deviation over a strided sample of dev
rows) at every eighth of training, keeps the checkpoint with the lowest mean (`load_best_model_at_end`
on `eval_perplexity_mean`) and runs the full evaluation on that one, not on the last. The best
parameters so far live in a folder of their own (`best_checkpoint/best_<step>`), so the rotation of
`trainer.keep_checkpoints` never deletes them; the history of measurements travels in every regular
checkpoint's metadata, so a resumed run chooses exactly what an uninterrupted one would.
"""

from __future__ import annotations

from climb_jax.train.checkpoint import Checkpointer

POINTS = 8  # measurements at every eighth of training


def best_step(history: list[dict]) -> int | None:
    """The step of the lowest `mean` in `history` (the earliest on a tie: like the reference, a later
    checkpoint must be strictly better to replace the best); None for an empty history."""
    best = None
    for entry in history:
        if best is None or entry["mean"] < best["mean"]:
            best = entry
    return None if best is None else int(best["step"])


def explain(record: dict | None) -> str | None:
    """The line a run's summary says when the final evaluation scored a checkpoint other than the last
    (from the eval JSON's `selection` record): which one, and the dev pseudo-perplexities that chose
    it. None when the last checkpoint was scored: nothing then needs saying."""
    history = {int(e["step"]): float(e["mean"]) for e in (record or {}).get("history", [])}
    if not history or record.get("select") == "last":
        return None
    chosen, last = int(record["checkpoint_step"]), max(history)
    if chosen == last or chosen not in history:
        return None
    return (f"the final evaluation scored the checkpoint of step {chosen}, not the last (step {last}): its dev "
            f"pseudo-perplexity {history[chosen]:.1f} was the lowest of {len(history)} measurements "
            f"(step {last}: {history[last]:.1f}); eval.select=last scores the last checkpoint instead")


class CheckpointSelection:
    """The measurements, the best slot and the choice for one run; inactive with `eval.select='last'`."""

    def __init__(self, config, workdir, enabled: bool):
        total = int(config.trainer.total_steps)
        self.mode = str(config.eval.select)
        self.total = total
        self.points = {total * k // POINTS for k in range(1, POINTS + 1)} - {0} if enabled else set()
        self.history: list[dict] = []
        self.slot = Checkpointer(workdir / "best_checkpoint", keep=None, async_save=False, prefix="best") \
            if enabled else None

    def measure(self, step: int, params, evaluator) -> dict | None:
        """At a selection point: dev perplexity of `params`, recorded, and `params` kept if they are the
        best so far (a best slot left past this step by a killed attempt is replaced: its contents are a
        deterministic function of the run). None elsewhere, and at a step already measured: a run
        resumed at a selection point measures it only if a stop signal interrupted the measurement."""
        if step not in self.points or any(entry["step"] == step for entry in self.history):
            return None
        dev = evaluator.dev_perplexity(params)
        entry = {"step": step, "mean": float(dev["mean"]), "std": float(dev["std"]), "sequences": int(dev["sequences"])}
        self.history.append(entry)
        if best_step(self.history) == step:
            if step not in self.slot.all_steps():
                self.slot.save(step, {"params": params}, {"step": step, "history": self.history})
            for other in self.slot.all_steps():
                if other != step:
                    self.slot.delete(other)
        return entry

    @property
    def best_step(self) -> int | None:
        return best_step(self.history)

    def final_params(self, params, abstract_params):
        """The parameters the final evaluation scores: the best checkpoint's, or `params` (the last)."""
        chosen = self.best_step
        if chosen is None or chosen == self.total:
            return params
        state, _, _ = self.slot.restore(chosen, {"params": abstract_params})
        return state["params"]

    def record(self) -> dict:
        """What the eval JSON says about the choice."""
        return {"select": self.mode if self.points else "last",  # no dev split: nothing to select by
                "checkpoint_step": self.best_step or self.total,
                "metric": "dev pseudo-perplexity: mean over a strided sample of dev rows (`sequences` each)",
                "history": self.history}

    def close(self) -> None:
        if self.slot is not None:
            self.slot.close()
