"""The fine-tuning model and its jitted steps: a pretrained encoder with a fresh classification head.

The model is the pretrained `RobertaEncoder` (parameters 'encoder', as in pre-training) and a
`ClassificationHead` ('classifier': first token, dense + tanh, as RoBERTa), trained with the
project's one AdamW recipe (`train/optim.py`: transformers' AdamW direction, weight decay on
matrices only, torch's clipping rule over all parameters, Hugging Face's linear schedule with
warmup and decay to zero over the most epochs). One jitted train
step and one jitted eval step, each compiled once per model shape and schedule: every batch has the
same shape (sequences padded to one length per task, the last batch filled with zero-weight rows).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from climb_jax.errors import CheckpointError
from climb_jax.eval import tasks as tasks_lib
from climb_jax.models.roberta import ClassificationHead, RobertaConfig, RobertaEncoder
from climb_jax.train import optim


class SequenceClassifier(nn.Module):
    """The encoder (parameters 'encoder', as in pretraining) and a classification head ('classifier')."""

    config: RobertaConfig
    num_classes: int

    @nn.compact
    def __call__(self, input_ids, attention_mask, *, deterministic: bool = True):
        hidden = RobertaEncoder(self.config, name="encoder")(input_ids, attention_mask, deterministic=deterministic)
        return ClassificationHead(self.config, self.num_classes, name="classifier")(hidden, deterministic=deterministic)


@struct.dataclass
class FTState:
    step: jax.Array
    params: Any
    opt_state: Any


@dataclasses.dataclass(frozen=True)
class Optimizer:
    """The fine-tuning optimizer: the pre-training groups' AdamW direction (train/optim.py), the
    learning rate of Hugging Face's linear schedule, and torch's clipping rule over every parameter."""

    direction: optax.GradientTransformation
    lr: optim.WarmupDecay  # of the scheduler index: the number of steps taken before this one
    max_grad_norm: float

    @classmethod
    def build(cls, key: tuple, total_steps: int) -> "Optimizer":
        """`key` is `Settings.optimizer_key()`: (lr, warmup_fraction, weight_decay, max_grad_norm, b1,
        b2, eps). Warmup over round(warmup_fraction * total_steps) steps (none at 0: the first step
        takes the full rate), then linear decay to zero at `total_steps`."""
        lr, warmup_fraction, weight_decay, max_grad_norm, b1, b2, eps = key
        schedule = optim.WarmupDecay(float(lr), int(round(warmup_fraction * total_steps)), int(total_steps))
        return cls(optim.adamw_direction(b1, b2, eps, weight_decay), schedule, float(max_grad_norm))

    def init(self, params):
        return self.direction.init(params)

    def update(self, grads, opt_state, params, step):
        """(new params, new optimizer state, learning rate applied)."""
        grads, _ = optim.clip_like_torch(grads, self.max_grad_norm)
        direction, opt_state = self.direction.update(grads, opt_state, params)
        lr = self.lr(step)
        params = jax.tree_util.tree_map(lambda p, d: (p - lr * d).astype(p.dtype), params, direction)
        return params, opt_state, lr


def make_steps(model: SequenceClassifier, tx: Optimizer):
    """(train_step, eval_step), both to be jitted: pure functions of arrays only."""

    def finetune_train_step(state: FTState, batch: dict, key: jax.Array):
        dropout_key = jax.random.fold_in(key, state.step)

        def loss_fn(params):
            logits = model.apply({"params": params}, batch["input_ids"], batch["attention_mask"],
                                 deterministic=False, rngs={"dropout": dropout_key})
            ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["labels"])
            w = batch["weights"]
            return jnp.sum(ce * w) / jnp.maximum(jnp.sum(w), 1.0)

        loss, grads = jax.value_and_grad(loss_fn)(state.params)
        params, opt_state, _ = tx.update(grads, state.opt_state, state.params, state.step)
        return FTState(step=state.step + 1, params=params, opt_state=opt_state), loss

    def finetune_eval_step(params, batch: dict):
        logits = model.apply({"params": params}, batch["input_ids"], batch["attention_mask"], deterministic=True)
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)

    return finetune_train_step, finetune_eval_step


@dataclasses.dataclass(frozen=True)
class Steps:
    train: Callable
    eval: Callable
    init: Callable
    encoder_shapes: Any


@functools.lru_cache(maxsize=8)
def compiled_steps(cfg: RobertaConfig, num_classes: int, optimizer_key: tuple, total_steps: int) -> Steps:
    """The jitted init/train/eval functions of one model and schedule, kept so that fine-tuning again
    with the same shapes (another task, seed or checkpoint of the same run) does not compile again."""
    model = SequenceClassifier(cfg, num_classes)
    tx = Optimizer.build(optimizer_key, total_steps)
    train_step, eval_step = make_steps(model, tx)
    dummy = jnp.zeros((1, 8), jnp.int32)

    def init_state(encoder, key):
        fresh = model.init(key, dummy, jnp.ones_like(dummy))["params"]
        params = {"encoder": encoder, "classifier": fresh["classifier"]}
        return FTState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))

    shapes = jax.eval_shape(lambda k: model.init(k, dummy, jnp.ones_like(dummy)), jax.random.PRNGKey(0))["params"]
    return Steps(train=jax.jit(train_step, donate_argnums=(0,)), eval=jax.jit(eval_step),
                 init=jax.jit(init_state), encoder_shapes=shapes["encoder"])


def check_encoder(fresh: Any, pretrained: Any) -> None:
    """CheckpointError when the pretrained encoder's tree or shapes differ from the model config's."""
    got = jax.tree_util.tree_map(lambda x: tuple(np.shape(x)), pretrained)
    want = jax.tree_util.tree_map(lambda x: tuple(np.shape(x)), fresh)
    if jax.tree_util.tree_structure(got) != jax.tree_util.tree_structure(want) or got != want:
        raise CheckpointError("the pretrained encoder parameters do not match the model config "
                              "(different tree or shapes); was the checkpoint written by another model size?")


def batches(enc: tasks_lib.Encoded, order: np.ndarray, batch_size: int):
    """Fixed-shape batches over `order`; the last one filled with zero-weight copies of row 0."""
    n = order.size
    for start in range(0, n, batch_size):
        idx = order[start:start + batch_size]
        weights = np.ones(batch_size, np.float32)
        if idx.size < batch_size:
            weights[idx.size:] = 0.0
            idx = np.concatenate([idx, np.full(batch_size - idx.size, order[0])])
        yield {"input_ids": enc.input_ids[idx], "attention_mask": enc.attention_mask[idx],
               "labels": enc.labels[idx], "weights": weights}
