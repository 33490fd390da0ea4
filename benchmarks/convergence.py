"""Loss curves of our train step and of a PyTorch implementation of the reference's recipe, side by side.

  python benchmarks/convergence.py              # smoke-size model, 600 steps of 64 x 128 on the embedded sample
  python benchmarks/convergence.py --steps 2000 # longer
  python benchmarks/convergence.py --quick      # a width-64 model, synthetic rows, 24 steps of 8 x 32 (the tests)

Why: a curriculum-vs-vanilla answer is only worth something if our vanilla trains like the reference's,
and unit tests pin each part of the recipe separately. This runs the whole recipe end to end.

Ours is the train step exactly as the training loop compiles it (`RunSetup.compile`), from
`configs/vanilla.py:smoke` (model and data shapes) with the batch, the number of steps N and the
encoder's warmup N // 4 (the paper's 100k of 400k) set here. The reference side is written to CLIMB
(PyTorch)'s recipe, independently of our code except for the initial weights:
  * model: transformers' `RobertaPreLayerNormForMaskedLM` (our initial weights, converted by
    `models/hf_convert.py`); the MLM head's layer norm with eps 1e-12, as the reference's head is
    built from a default `RobertaConfig`;
  * encoder: transformers' AdamW (the trainer's `adamw_hf`: eps 1e-8, weight decay 0; the bias
    corrections in the step size and eps added before them), `get_linear_schedule_with_warmup`
    over the trainer's warmup and N steps, gradient clipped to norm 1.0 over the encoder only;
  * MLM head: its own AdamW (eps 1e-6) and `get_linear_schedule_with_warmup(M // 10, M)` with
    M = int(N * (end - start)) stepped once per step (the unit spans the whole run), never clipped;
  * masking: each non-special token selected with p = 0.15 (Bernoulli); of those 90 % become
    `<mask>`, 10 % a token drawn uniformly from the whole vocabulary, none stay unchanged; the loss
    is the mean cross-entropy over the selected tokens.
transformers' own AdamW class is gone from current releases, so its update rule is written out here.
Both sides see the same rows in the same order (an epoch-wise shuffle of the packed rows with a fixed
seed, as a Hugging Face trainer draws them). Masks and dropout come from each framework's own
generator, so single steps differ by sampling noise: compare mean losses per interval.

Checks computed (and printed): on the initial weights, one batch masked once and fed to both models
with dropout off gives the same loss (`same_batch_initial_loss`); the learning rates each side
applied agree at every step (`learning_rate_max_abs_diff`); our step compiled once.

Output, one JSON object per line: the environment, one `convergence_interval` line per interval
(`end_step`, `ours`, `reference`, `gap` = ours - reference, in nats, and `gap_se`, its sampling
noise as the standard error of the per-step differences), and a `convergence` summary
(`max_abs_gap`, `mean_gap`, the checks above, the recipe values, seconds per side).
"""

from __future__ import annotations

import argparse
import hashlib
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# OpenMP's default spin-waiting stalls torch's threads whenever another process takes a core.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import common  # noqa: E402
from climb_jax.constants import MASK_ID, NUM_SPECIAL  # noqa: E402
from climb_jax.parallel import mesh as mesh_lib  # noqa: E402
from climb_jax.train.compile_count import CompileCounter  # noqa: E402
from climb_jax.train.setup import RunSetup  # noqa: E402

STEP_NAME = "convergence_step"

# The reference's MLM recipe (conf/objective_curriculum/units/mlm.yaml and the unit's code, transformers
# 4.26 defaults), written here on its own so that a drift of our defaults shows up as a gap.
REFERENCE_RECIPE = {
    "mask_probability": 0.15,
    "mask_fraction": 0.9,  # of the selected: <mask>
    "random_fraction": 0.1,  # of the selected: a uniform token from the whole vocabulary (the rest unchanged)
    "head_adam_eps": 1e-6,
    "head_layer_norm_eps": 1e-12,
    "encoder_adam_eps": 1e-8,
    "max_grad_norm": 1.0,  # over the encoder's parameters only
    "head_warmup_fraction": 0.1,  # get_linear_schedule_with_warmup(M // 10, M)
}
# Files whose content decides our side's recipe: their hash ties a figure to a state of the code.
RECIPE_FILES = ("climb_jax/train/step.py", "climb_jax/train/optim.py", "climb_jax/train/masking.py",
                "climb_jax/curriculum/objectives.py", "climb_jax/models/roberta.py", "climb_jax/models/ops.py",
                "climb_jax/config/schema.py")


def make_config(steps: int, batch: int, seq: int, quick: bool):
    config = common.load_config("vanilla", "smoke")
    if quick:
        common.shrink_to_tiny(config, seq=seq)
    config.data.seq_len = seq
    config.trainer.batch_size = batch
    config.trainer.total_steps = steps
    config.trainer.warmup_steps = steps // 4  # the paper's 100k of 400k
    config.mesh.cpu_devices = 1
    return config


def training_rows(config, quick: bool, cache_dir: str) -> np.ndarray:
    """The rows both sides draw from: the embedded sample prepared and packed as training prepares it
    (`data.dataset.prepare_data`), or (--quick) synthetic Zipf rows. Sets `config.data.vocab_size` to
    the tokenizer's size."""
    if quick:
        return common.synthetic_batch(0, 512, config.data.seq_len, config.data.vocab_size)["input_ids"]
    from climb_jax.data.dataset import prepare_data

    data = prepare_data(config.data, Path(cache_dir), progress=False)
    config.data.vocab_size = len(data.tokenizer)
    return np.asarray(data.train.input_ids)


def batches(rows: np.ndarray, batch: int, steps: int, seed: int = 0):
    """`steps` batches of `batch` rows: consecutive slices of a fresh permutation per epoch."""
    rng = np.random.default_rng(seed)
    order = np.empty(0, np.int64)
    for _ in range(steps):
        while len(order) < batch:
            order = np.concatenate([order, rng.permutation(len(rows))])
        take, order = order[:batch], order[batch:]
        yield rows[take].astype(np.int32)


def recipe_state() -> dict:
    """The git commit, whether the recipe files differ from it, and a hash of their content."""
    h = hashlib.sha1()
    for name in RECIPE_FILES:
        path = common.REPO / name
        h.update(path.read_bytes() if path.exists() else b"")
    out = {"recipe_files_sha1": h.hexdigest()[:12]}
    try:
        run = lambda *a: subprocess.run(["git", *a], cwd=common.REPO, capture_output=True, text=True,
                                        timeout=30).stdout.rstrip()
        out["git_commit"] = run("rev-parse", "--short", "HEAD").strip() or None
        status = run("status", "--porcelain", "--", *RECIPE_FILES)
        out["recipe_files_modified"] = sorted(line[3:] for line in status.splitlines())
    except (OSError, subprocess.SubprocessError):
        pass
    return out


# --------------------------------------------------------------------------------------------
# The reference's recipe in PyTorch.


class AdamWHF:
    """transformers 4.26's AdamW with weight decay 0: bias corrections folded into the step size, eps
    added to sqrt(v) before them. A torch.optim.Optimizer subclass is built lazily (torch imports late)."""

    @staticmethod
    def make(params, lr: float, eps: float, betas=(0.9, 0.999)):
        import torch

        class _AdamWHF(torch.optim.Optimizer):
            def __init__(self, params):
                super().__init__(params, dict(lr=lr, eps=eps, betas=betas))

            @torch.no_grad()
            def step(self):
                for group in self.param_groups:
                    b1, b2 = group["betas"]
                    for p in group["params"]:
                        if p.grad is None:
                            continue
                        st = self.state[p]
                        if not st:
                            st["step"], st["m"], st["v"] = 0, torch.zeros_like(p), torch.zeros_like(p)
                        st["step"] += 1
                        st["m"].mul_(b1).add_(p.grad, alpha=1 - b1)
                        st["v"].mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
                        size = group["lr"] * math.sqrt(1 - b2 ** st["step"]) / (1 - b1 ** st["step"])
                        p.addcdiv_(st["m"], st["v"].sqrt().add_(group["eps"]), value=-size)

        return _AdamWHF(params)


class Reference:
    """HF `RobertaPreLayerNormForMaskedLM` trained with the reference's recipe (`REFERENCE_RECIPE`)."""

    def __init__(self, params, setup: RunSetup, threads: int, seed: int):
        import torch
        from transformers import (RobertaPreLayerNormConfig, RobertaPreLayerNormForMaskedLM,
                                  get_linear_schedule_with_warmup)

        from climb_jax.models.hf_convert import hf_config_dict, to_hf_state_dict

        self.torch = torch
        torch.set_num_threads(threads)
        torch.manual_seed(seed)  # dropout
        cfg, t = setup.model, setup.config.trainer
        r = REFERENCE_RECIPE
        self.vocab = cfg.vocab_size
        model = RobertaPreLayerNormForMaskedLM(RobertaPreLayerNormConfig(**hf_config_dict(cfg)))
        state = {k: torch.from_numpy(np.array(v)) for k, v in to_hf_state_dict(params, cfg).items()}
        missing, unexpected = model.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.endswith("position_ids")]
        if missing or unexpected:
            raise RuntimeError(f"weights do not match: missing {missing}, unexpected {unexpected}")
        model.lm_head.layer_norm.eps = r["head_layer_norm_eps"]
        self.model = model.train()
        (mlm,) = [u for u in setup.units if u.task == "mlm"]
        total = int(t.total_steps)
        self.encoder_params = list(model.roberta_prelayernorm.parameters())
        self.head_params = list(model.lm_head.parameters())
        assert len(self.encoder_params) + len(self.head_params) == len(list(model.parameters()))
        self.encoder_opt = AdamWHF.make(self.encoder_params, float(t.lr), r["encoder_adam_eps"])
        self.head_opt = AdamWHF.make(self.head_params, float(mlm.lr), r["head_adam_eps"])
        m = int(total * (mlm.end - mlm.start))
        self.schedulers = [get_linear_schedule_with_warmup(self.encoder_opt, int(t.warmup_steps), total),
                           get_linear_schedule_with_warmup(self.head_opt, int(m * r["head_warmup_fraction"]), m)]
        self.gen = torch.Generator().manual_seed(seed)  # masks

    def mask(self, ids, gen=None):
        """The reference's MLM collator: (corrupted inputs, labels with -100 where not selected)."""
        torch, r = self.torch, REFERENCE_RECIPE
        gen = gen or self.gen
        select_p = torch.full(ids.shape, r["mask_probability"]).masked_fill(ids < NUM_SPECIAL, 0.0)
        selected = torch.bernoulli(select_p, generator=gen).bool()
        labels = ids.masked_fill(~selected, -100)
        to_mask = torch.bernoulli(torch.full(ids.shape, r["mask_fraction"]), generator=gen).bool() & selected
        rest = r["random_fraction"] / (1.0 - r["mask_fraction"])
        to_random = torch.bernoulli(torch.full(ids.shape, rest), generator=gen).bool() & selected & ~to_mask
        words = torch.randint(self.vocab, ids.shape, generator=gen)
        inputs = ids.masked_fill(to_mask, MASK_ID)
        inputs[to_random] = words[to_random]
        return inputs, labels

    def loss(self, inputs, labels):
        logits = self.model(input_ids=inputs, attention_mask=self.torch.ones_like(inputs)).logits
        return self.torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels)  # mean over labels != -100

    def learning_rates(self) -> dict[str, float]:
        return {"encoder": self.encoder_opt.param_groups[0]["lr"], "mlm_head": self.head_opt.param_groups[0]["lr"]}

    def step(self, ids: np.ndarray) -> tuple[float, dict[str, float]]:
        """One training step; returns the loss and the learning rates it applied."""
        torch = self.torch
        lrs = self.learning_rates()
        loss = self.loss(*self.mask(torch.from_numpy(ids.astype(np.int64))))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.encoder_params, REFERENCE_RECIPE["max_grad_norm"])
        for opt in (self.encoder_opt, self.head_opt):
            opt.step()
            opt.zero_grad(set_to_none=True)
        for s in self.schedulers:
            s.step()
        return float(loss.detach()), lrs


def same_batch_losses(setup: RunSetup, params, ref: Reference, ids: np.ndarray, seed: int) -> dict:
    """Both models' loss on one batch masked once (by the reference's collator), dropout off: equal
    initial weights must give equal losses (float32 rounding apart)."""
    import torch

    from climb_jax.models.roberta import LMHead, RobertaEncoder

    inputs, labels = ref.mask(torch.from_numpy(ids.astype(np.int64)), torch.Generator().manual_seed(seed + 1))
    ref.model.eval()
    with torch.no_grad():
        theirs = float(ref.loss(inputs, labels))
    ref.model.train()
    hidden = RobertaEncoder(setup.model).apply({"params": params["encoder"]}, jnp.asarray(inputs.numpy(), jnp.int32),
                                                deterministic=True)
    logits = LMHead(setup.model, num_outputs=setup.model.vocab_size).apply({"params": params["mlm_head"]}, hidden)
    lab = labels.numpy()
    sel = lab != -100
    logp = np.asarray(jax.nn.log_softmax(logits.astype(jnp.float32), -1))
    ours = float(-np.take_along_axis(logp, np.where(sel, lab, 0)[..., None], -1)[..., 0][sel].mean())
    return {"ours": round(ours, 6), "reference": round(theirs, 6), "abs_diff": float(f"{abs(ours - theirs):.3g}"),
            "targets": int(sel.sum())}


# --------------------------------------------------------------------------------------------


def run(args, out: common.JsonLines) -> dict:
    t_start = time.perf_counter()
    config = make_config(args.steps, args.batch, args.seq, args.quick)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        rows = training_rows(config, args.quick, args.cache_dir or tmp)
        data_s = time.perf_counter() - t0
    setup = RunSetup.from_config(config, vocab_size=config.data.vocab_size)
    (mlm,) = [u for u in setup.units if u.task == "mlm"]
    t = config.trainer
    ours_recipe = {"mask_probability": mlm.mask_probability,
                   "mask_fraction": 1.0 - mlm.random_probability - mlm.unmask_probability,
                   "random_fraction": mlm.random_probability, "head_adam_eps": mlm.adam_eps,
                   "head_layer_norm_eps": setup.model.head_layer_norm_eps, "encoder_adam_eps": float(t.adam_eps),
                   "max_grad_norm": float(t.max_grad_norm), "mlm_schedule": mlm.schedule}
    mesh = mesh_lib.create_mesh(config.mesh)
    seed = int(config.seed)
    ours_s = theirs_s = 0.0
    with CompileCounter() as counter:
        compiled = setup.compile(mesh, name=STEP_NAME)
        state = compiled.init()
        params = jax.device_get(state.params)
        ref = Reference(params, setup, common.usable_cores(), seed)
        stream = batches(rows, args.batch, args.steps, seed)
        first = next(stream)
        parity = same_batch_losses(setup, params, ref, first, seed)
        ours, theirs, lr_diff = [], [], {"encoder": 0.0, "mlm_head": 0.0}
        for k, ids in enumerate([first, *stream]):
            t0 = time.perf_counter()
            state, metrics = compiled.step(state, mesh_lib.global_batch(
                {"input_ids": ids, "pos_ids": np.zeros_like(ids, np.int8)}, compiled.batch_sharding),
                compiled.source.at(k))
            m = jax.device_get({"loss": metrics["loss"], "lr": metrics["learning_rates"],
                                "overflow": metrics["mlm_overflow"]})
            t1 = time.perf_counter()
            loss, lrs = ref.step(ids)
            theirs_s += time.perf_counter() - t1
            ours_s += t1 - t0
            ours.append(float(m["loss"]))
            theirs.append(loss)
            if float(m["overflow"]):
                raise SystemExit(f"our step left out {float(m['overflow']):.0f} selected tokens (mlm_overflow)")
            for g in lr_diff:
                lr_diff[g] = max(lr_diff[g], abs(float(m["lr"][g]) - lrs[g]))
            if len(theirs) % args.interval == 0:
                print(f"step {len(theirs)}/{args.steps}: ours {np.mean(ours[-args.interval:]):.4f} "
                      f"reference {np.mean(theirs[-args.interval:]):.4f}", file=sys.stderr, flush=True)
    gaps = []
    for end in range(args.interval, args.steps + 1, args.interval):
        a = float(np.mean(ours[end - args.interval:end]))
        b = float(np.mean(theirs[end - args.interval:end]))
        gaps.append(a - b)
        # The sampling noise of the gap: the per-step differences' standard error over the interval
        # (each side's trend within an interval largely cancels in the difference).
        diff = np.subtract(ours[end - args.interval:end], theirs[end - args.interval:end])
        out({"bench": "convergence_interval", "end_step": end, "ours": round(a, 5), "reference": round(b, 5),
             "gap": round(a - b, 5), "gap_se": round(float(diff.std(ddof=1) / math.sqrt(len(diff))), 5)})
    return out({"bench": "convergence", "data": "synthetic" if args.quick else "embedded sample",
                "rows": int(len(rows)), "steps": args.steps, "batch": args.batch, "seq": args.seq,
                "interval": args.interval, "seed": seed,
                "model": {k: int(config.model[k]) for k in ("num_layers", "hidden_size", "num_heads",
                                                             "intermediate_size")},
                "vocab_size": setup.model.vocab_size, "lr": float(t.lr), "head_lr": float(mlm.lr),
                "warmup_steps": int(t.warmup_steps),
                "max_abs_gap": round(float(np.max(np.abs(gaps))), 5), "mean_gap": round(float(np.mean(gaps)), 5),
                "first_loss": {"ours": round(ours[0], 4), "reference": round(theirs[0], 4)},
                "last_interval": {"ours": round(float(np.mean(ours[-args.interval:])), 4),
                                  "reference": round(float(np.mean(theirs[-args.interval:])), 4)},
                "same_batch_initial_loss": parity,
                "learning_rate_max_abs_diff": {g: float(f"{d:.3g}") for g, d in lr_diff.items()},
                "reference_recipe": REFERENCE_RECIPE, "ours_recipe": ours_recipe,
                "ours_compiles": counter.count(STEP_NAME),
                "seconds": {"data": round(data_s, 1), "ours": round(ours_s, 1), "reference": round(theirs_s, 1),
                            "total": round(time.perf_counter() - t_start, 1)},
                **recipe_state()})


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--interval", type=int, default=50)
    p.add_argument("--quick", action="store_true", help="width-64 model, synthetic rows, 24 steps of 8 x 32")
    p.add_argument("--cache_dir", default="", help="data cache for the embedded sample (default: a temporary one)")
    p.add_argument("--out", default=None, help="also append the JSON lines to this file")
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.batch, args.seq, args.interval = 24, 8, 32, 8
    if args.steps % args.interval:
        raise SystemExit(f"error: --steps={args.steps} must be a multiple of --interval={args.interval}")
    import torch
    import transformers

    out = common.JsonLines(args.out)
    out(common.environment("convergence", torch=torch.__version__, transformers=transformers.__version__))
    summary = run(args, out)
    if summary["ours_compiles"] != 1:
        raise SystemExit(f"our step compiled {summary['ours_compiles']} times; expected 1")
    return out.records


if __name__ == "__main__":
    main()
