"""What a training run reports: the log line of each interval, and its progress on the console."""

from __future__ import annotations

import sys

import numpy as np
from tqdm import tqdm

from climb_jax.data.dataset import startup_notes
from climb_jax.eval.progress import is_terminal
from climb_jax.train.selection import explain


def describe(config, data, model) -> list[str]:
    """What a run trains on and what it trains, printed before the first compile."""
    c, t = config, config.trainer
    return [f"corpus {c.data.corpus}: {len(data.train)} training sequences of {c.data.seq_len} tokens from "
            f"{len(data.train_sources)} sources; tokenizer: byte-level BPE, {len(data.tokenizer)} tokens "
            f"({c.data.token_order} order); data cache {data.directory}",
            f"model: {c.model.size} ({model.num_layers} layers, width {model.hidden_size}), {t.total_steps} steps "
            f"of {t.batch_size} x {c.data.seq_len} tokens, {c.model.dtype} activations",
            *startup_notes(data, c.data, t)]


def log_record(step: int, fetched: list[dict], host: list[dict], *, setup, sampler, sources: list[str],
               tokens_per_step: int, seconds: float, steps: int) -> dict:
    """The metrics.jsonl line of the interval ending at `step`, from the step metrics of its steps
    (`fetched`, on the host) and what the host knew of their batches (`host`): means over the interval,
    the curriculum's values at its last step, and the learning rates the optimizer applied there (never
    recomputed here from a schedule, so the log shows what training did)."""
    last = fetched[-1]
    rec = {"step": step, "loss": float(np.mean([m["loss"] for m in fetched], dtype=np.float64)),
           "grad_norm": float(np.mean([m["grad_norm"] for m in fetched])),
           "learning_rate": float(last["learning_rates"]["encoder"]), "tokens_seen": int(step * tokens_per_step),
           "step_time_s": seconds / max(steps, 1), "tokens_per_s": tokens_per_step * steps / max(seconds, 1e-9)}
    # Selected MLM tokens beyond the step's static target slots (left out of the loss); expected 0.
    rec["mlm_overflow"] = int(sum(float(m["mlm_overflow"]) for m in fetched))
    stats = np.sum([m["unit_stats"] for m in fetched], axis=0)
    for i, u in enumerate(setup.units):
        if stats[i, 1] > 0:
            rec[f"{u.name}_loss"] = float(stats[i, 0] / stats[i, 1])
            rec[f"{u.name}_accuracy"] = float(stats[i, 2] / stats[i, 1])
        rec[f"{u.name}_active"] = float(last["objective_weights"][i])
        rec[f"{u.name}_learning_rate"] = float(last["learning_rates"][u.head])
    kind = setup.settings.vocab_kind
    if kind != "none":
        # The curriculum the step applied (its own metrics), never recomputed here from a schedule.
        rec["vocab_pace"] = float(last["vocab_pace"])
        rec["vocab_allowed_ids"] = int(last["vocab_allowed_ids"])  # non-special ids allowed in some POS class
        rec["vocab_allowed_fraction"] = float(last["vocab_allowed_fraction"])
        real = max(sum(m["real_tokens"] for m in fetched), 1)
        rec["unk_fraction"] = float(sum(m["unk_replaced"] for m in fetched) / real)
    if sampler.curriculum:
        rec["data_fraction"] = float(host[-1]["data_fraction"])  # the fraction the sampler actually drew from
        rec["data_pace"] = float(host[-1]["data_pace"])  # the pacing function's value
        rec["difficulty_threshold"] = float(last["difficulty_threshold"])  # the step's score threshold
        # Rows scored above their step's threshold (no loss weight): 0 while the sampler draws exactly.
        rec["rows_above_threshold"] = int(sum(float(m["rows_above_threshold"]) for m in fetched))
        src = np.concatenate([h["source_ids"] for h in host])
        counts = np.bincount(src, minlength=len(sources)) / max(len(src), 1)
        rec["source_mix"] = {name: float(counts[i]) for i, name in enumerate(sources)}
        rec["batch_difficulty"] = float(np.mean(sampler.scores[np.concatenate([h["index"] for h in host])]))
    return rec


def dev_measured(step: int, dev: dict) -> str:
    """The line of a checkpoint-selection measurement. Labelled as such: the final evaluation's line also
    has a dev pseudo-perplexity, a per-token figure over fewer rows, which is another number."""
    return (f"step {step}: checkpoint selection: dev pseudo-perplexity {dev['mean']:.2f} (mean over "
            f"{dev['sequences']} rows, std {dev['std']:.2f})")


def stopped(reason: str, step: int, start: int) -> str:
    """The line a run stopped by a signal ends with: what was saved and how to resume."""
    what = (f"saved a checkpoint at step {step}" if step > start else
            f"the checkpoint at step {step} is kept" if step else "no step was trained")
    return f"{'SIGTERM' if reason == 'preempted' else 'SIGINT'} received: {what}; rerun the same command to resume."


def complete(workdir, total: int, metrics_path, metrics: list[dict], evaluation: dict | None, eval_path) -> str:
    """The line a rerun of a finished run prints instead of resuming: where its results are, and its
    final figures."""
    last = next((m for m in reversed(metrics) if "loss" in m), {})  # not a dev measurement's line
    blimp = (evaluation or {}).get("blimp", {}).get("overall")
    note = explain((evaluation or {}).get("selection"))  # a checkpoint other than the last was scored
    return (f"the run in {workdir} is complete ({total} steps): nothing to resume. Results: "
            f"{metrics_path}" + (f", {eval_path}" if eval_path else "")
            + (f"; final loss {last['loss']:.4f}" if "loss" in last else "")
            + (f", BLiMP {blimp:.4f}" if blimp is not None else "")
            + (f"; {note}" if note else ""))


class Progress:
    """A progress bar of computed steps on a terminal; elsewhere (launch scripts, log files, where
    carriage-return bars become one unreadable line) and with `bar=False` (`--noprogress`) one plain
    line per log step. `enabled=False` (processes other than 0) shows nothing."""

    def __init__(self, enabled: bool, total: int, bar: bool = True):
        self.enabled, self.total, self.allow_bar, self.bar = enabled, total, bar, None

    def start(self, step: int) -> None:
        if self.enabled and self.allow_bar and is_terminal(sys.stdout):
            self.bar = tqdm(total=self.total, initial=step, desc="train", unit="step", dynamic_ncols=True)

    def computed(self, step: int) -> None:
        if self.bar is not None and step > self.bar.n:
            self.bar.update(step - self.bar.n)

    def log(self, rec: dict, eta_s: float | None = None) -> None:
        """`eta_s`: the time left with the evaluations still due (train/estimate.py), when known."""
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{rec['loss']:.3f}", tok_s=f"{rec['tokens_per_s']:.0f}")
        elif self.enabled:
            eta = int(eta_s if eta_s is not None else rec["step_time_s"] * (self.total - rec["step"]))
            print(f"step {rec['step']}/{self.total}: loss {rec['loss']:.4f}, {rec['tokens_per_s']:.0f} tokens/s, "
                  f"ETA {eta // 3600}h{eta // 60 % 60:02d}m", flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        self.bar = None
