"""When fine-tuning evaluates, when it stops early, and which checkpoint it reports.

One rule serves both protocols, the Hugging Face Trainer's as the BabyLM pipeline used it:
  * an evaluation is due every `eval_every` steps (0: at the end of every epoch);
  * the patience counter resets when the metric beats the best so far by more than `threshold`,
    otherwise it grows, and training stops when it reaches `patience` (0: never);
  * an evaluation can become the selected checkpoint only at a step that is a multiple of
    `select_every` (0: any evaluation), and only by beating the best strictly (ties keep the earlier);
  * with no selected checkpoint (no evaluation at such a step) the last step is reported.
The Trainer records its best metric when it saves; the patience compares with that record, which
is why an evaluation between saves counts against the patience but cannot become the best.
`per_epoch` is the same rule with `threshold=0` and `select_every=0`.
"""

from __future__ import annotations

import dataclasses
from typing import Any


def evaluation_due(step: int, steps_per_epoch: int, eval_every: int) -> bool:
    """Whether an evaluation follows train step number `step` (1-based, counted over all epochs)."""
    if eval_every > 0:
        return step % eval_every == 0
    return step % steps_per_epoch == 0


@dataclasses.dataclass
class Selector:
    """Tracks the best evaluation and the patience; `observe` once per evaluation."""

    patience: int
    threshold: float
    select_every: int
    best_value: float | None = None
    best_step: int | None = None
    best: Any = None  # whatever the caller keeps of the selected evaluation
    counter: int = 0

    def observe(self, step: int, value: float, payload: Any = None) -> tuple[bool, bool]:
        """Records an evaluation at `step`; returns (selected, stop)."""
        if self.best_value is None or (value > self.best_value and value - self.best_value > self.threshold):
            self.counter = 0
        else:
            self.counter += 1
        selected = (self.select_every == 0 or step % self.select_every == 0) and \
            (self.best_value is None or value > self.best_value)
        if selected:
            self.best_value, self.best_step, self.best = value, step, payload
        return selected, bool(self.patience) and self.counter >= self.patience
