"""The reference's train step in PyTorch, as CLIMB ran it: Hugging Face `RobertaPreLayerNormForMaskedLM`
(config from `hf_config_dict`, loaded with OUR initial weights, default attention implementation),
`torch.optim.AdamW` with the same hyper-parameters, gradient clipping and
`get_linear_schedule_with_warmup`, and Hugging Face's MLM masking (`DataCollatorForLanguageModeling`'s
rule). `train_step.py` times it against ours on CPU; `accelerator.py` moves it to a GPU.
"""

from __future__ import annotations

import numpy as np

from climb_jax.config import choices as choices_lib
from climb_jax.constants import MASK_ID, NUM_SPECIAL


class TorchStep:
    """The reference's stack: HF RobertaPreLayerNormForMaskedLM + torch AdamW + HF-style MLM masking."""

    def __init__(self, model_cfg, params, trainer_cfg, threads: int):
        import torch
        import transformers
        from transformers import RobertaPreLayerNormConfig, RobertaPreLayerNormForMaskedLM

        from climb_jax.models.hf_convert import hf_config_dict, to_hf_state_dict

        self.torch = torch
        torch.set_num_threads(threads)
        torch.manual_seed(0)
        self.vocab = model_cfg.vocab_size
        self.model = RobertaPreLayerNormForMaskedLM(RobertaPreLayerNormConfig(**hf_config_dict(model_cfg)))
        state = {k: torch.from_numpy(v) for k, v in to_hf_state_dict(params, model_cfg).items()}
        missing, unexpected = self.model.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.endswith("position_ids")]
        if model_cfg.head_layer_norm_eps is not None:  # the reference's heads: a default RobertaConfig's eps
            self.model.lm_head.layer_norm.eps = float(model_cfg.head_layer_norm_eps)
        if missing or unexpected:
            raise RuntimeError(f"weights do not match the reference model: missing {missing}, unexpected {unexpected}")
        self.model.train()
        t = trainer_cfg
        self.max_grad_norm = float(t.max_grad_norm)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=t.lr, betas=(t.adam_b1, t.adam_b2),
                                     eps=t.adam_eps, weight_decay=t.weight_decay)
        self.sched = transformers.get_linear_schedule_with_warmup(self.opt, t.warmup_steps, t.total_steps)
        self.gen = torch.Generator().manual_seed(0)
        self.mask_probability = choices_lib.MLM_MASK_PROBABILITY
        self.batch = None
        self.last_loss = float("nan")
        self.attn_implementation = getattr(self.model.config, "_attn_implementation", "unknown")

    def set_batch(self, batch: dict[str, np.ndarray]) -> None:
        self.batch = self.torch.from_numpy(np.asarray(batch["input_ids"], np.int64))

    def mask(self, ids):
        """DataCollatorForLanguageModeling's masking (mlm_probability, 80% <mask>, 10% random, 10% kept)."""
        torch = self.torch
        labels = ids.clone()
        prob = torch.full(ids.shape, self.mask_probability)
        prob.masked_fill_(ids < NUM_SPECIAL, 0.0)
        masked = torch.bernoulli(prob, generator=self.gen).bool()
        labels[~masked] = -100
        inputs = ids.clone()
        replaced = torch.bernoulli(torch.full(ids.shape, 0.8), generator=self.gen).bool() & masked
        inputs[replaced] = MASK_ID
        rand = torch.bernoulli(torch.full(ids.shape, 0.5), generator=self.gen).bool() & masked & ~replaced
        words = torch.randint(self.vocab, ids.shape, generator=self.gen)
        inputs[rand] = words[rand]
        return inputs, labels

    def forward_context(self):
        """Around each forward pass: nothing on CPU; `benchmarks/accelerator.py` puts autocast here."""
        import contextlib

        return contextlib.nullcontext()

    def synchronize(self) -> None:
        """After the timed steps: nothing on CPU (the work is done when `run` returns)."""

    def run(self, steps: int) -> None:
        torch = self.torch
        for _ in range(steps):
            inputs, labels = self.mask(self.batch)
            with self.forward_context():
                out = self.model(input_ids=inputs, attention_mask=torch.ones_like(inputs), labels=labels)
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.max_grad_norm)
            self.opt.step()
            self.sched.step()
            self.opt.zero_grad(set_to_none=True)
        self.synchronize()
        self.last_loss = float(out.loss.detach())

    def logits(self, ids: np.ndarray) -> np.ndarray:
        torch = self.torch
        self.model.eval()
        with torch.no_grad():
            t = torch.from_numpy(np.asarray(ids, np.int64))
            out = self.model(input_ids=t, attention_mask=torch.ones_like(t)).logits.numpy()
        self.model.train()
        return out
