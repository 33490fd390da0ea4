"""Tokens/s of our jitted train step against the PyTorch reference, interleaved in one process.

  python benchmarks/train_step.py --quick     # `small`, global batch 32 x 128, a few timed rounds
  python benchmarks/train_step.py             # `small`, more rounds
  python benchmarks/train_step.py --full      # `small`, `medium` and `large`
  python benchmarks/train_step.py --tiny      # a 2-layer model: checks the benchmark itself, in seconds
  python benchmarks/train_step.py --quick --breakdown   # also time the parts of our step
  python benchmarks/train_step.py --quick --cpu_devices=1   # ours on JAX's single CPU device

Ours: the step `RunSetup.compile` builds for the training loop (mesh shardings, the state
donated), from the `configs/vanilla.py` preset of each size, with `mesh.cpu_devices=0` (one XLA device
per core, the batch split over them) unless `--cpu_devices` says otherwise. The reference is CLIMB (PyTorch)'s stack:
Hugging Face `RobertaPreLayerNormForMaskedLM` (config from `hf_config_dict`, loaded with OUR initial
weights, default attention implementation), `torch.optim.AdamW` with the same hyper-parameters,
gradient clipping and `get_linear_schedule_with_warmup`, and Hugging Face's MLM masking
(`DataCollatorForLanguageModeling`'s rule: each non-special token masked with probability 0.15,
80/10/10 mask/random/keep, labels -100 elsewhere, loss through the model's `labels`). Both see the
same synthetic batch (Zipf-distributed ids, English-like POS tags), in training mode (dropout on).

The two are timed in interleaved rounds (ours, torch, torch, ours, ...); each keeps its best round.
Both use every usable core: XLA's CPU thread pool does by default, and torch is set to
`torch.set_num_threads(cores)`.

Output, one JSON object per line: the environment, the matmul peak, one line per implementation and
size (`impl`, `size`, `batch`, `seq`, `tokens_per_s`, `step_s`, ...), and a summary per size with the
ratio, the model FLOPs per token (see `common.flops_per_token`), achieved FLOP/s and utilisation of the
measured float32 matmul peak. Correctness checks: both models give the same logits on the same weights
(`logits_max_abs_diff`), and our step compiles exactly once (`compiles`).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# OpenMP's default spin-waiting makes torch's threads stall whenever another process takes a core (50x
# slower steps on a busy 2-core machine); passive waiting costs nothing measurable on an idle one.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import common, step_profile  # noqa: E402
from benchmarks.torch_reference import TorchStep  # noqa: E402
from climb_jax.config import choices as choices_lib  # noqa: E402
from climb_jax.constants import NUM_SPECIAL  # noqa: E402
from climb_jax.models.roberta import RobertaForMaskedLM  # noqa: E402
from climb_jax.parallel import mesh as mesh_lib  # noqa: E402
from climb_jax.train.compile_count import CompileCounter  # noqa: E402
from climb_jax.train.masking import num_targets  # noqa: E402
from climb_jax.train.setup import RunSetup  # noqa: E402

STEP_NAME = "train_step"


# --------------------------------------------------------------------------------------------
# Ours.


def make_config(size: str, batch: int, seq: int, dtype: str = "float32"):
    if size == "tiny":
        config = common.load_config("vanilla", "tiny")
        common.shrink_to_tiny(config, seq=seq)
    else:
        config = common.load_config("vanilla", size)
        config.data.seq_len = seq
    config.trainer.batch_size = batch
    config.model.dtype = dtype
    return config


class OurStep:
    """The train step exactly as the training loop compiles and calls it."""

    def __init__(self, config, counter: CompileCounter):
        vocab = config.data.vocab_size
        self.setup = RunSetup.from_config(config, vocab_size=vocab)
        self.mesh = mesh_lib.create_mesh(config.mesh)
        compiled = self.setup.compile(self.mesh, name=STEP_NAME)
        self.batch_sharding = compiled.batch_sharding
        self.state = compiled.init()
        self.initial_params = jax.device_get(self.state.params)
        self.step_fn = compiled.step
        self.source = compiled.source  # each step's curriculum, built on the host as training does
        self.step = 0
        self.counter = counter
        self.batch = None
        self.last_loss = float("nan")

    def set_batch(self, batch: dict[str, np.ndarray]) -> None:
        self.batch = mesh_lib.global_batch(batch, self.batch_sharding)

    def run(self, steps: int) -> None:
        metrics = None
        for _ in range(steps):
            self.state, metrics = self.step_fn(self.state, self.batch, self.source.at(self.step))
            self.step += 1
        jax.block_until_ready((self.state, metrics))
        self.last_loss = float(metrics["loss"])

    def xla_flops(self) -> float | None:
        """XLA's own count of the compiled step's FLOPs (a cross-check of the formula), for the whole
        batch: the compiled program is one device's share, so its count is multiplied by the devices."""
        try:
            cost = self.step_fn.lower(self.state, self.batch, self.source.at(self.step)).compile().cost_analysis()
            if isinstance(cost, (list, tuple)):
                cost = cost[0]
            return float(cost.get("flops", float("nan"))) * self.mesh.size
        except Exception:  # cost analysis is best-effort on some backends
            return None


# --------------------------------------------------------------------------------------------
# Against the PyTorch reference (benchmarks/torch_reference.py).


def parity(ours: OurStep, ref: TorchStep, batch: dict[str, np.ndarray]) -> float:
    """Max |logit difference| of the two models at the shared initial weights (dropout off)."""
    ids = batch["input_ids"][:2]
    model = RobertaForMaskedLM(ours.setup.model)
    params = {"encoder": ours.initial_params["encoder"], "mlm_head": ours.initial_params["mlm_head"]}
    mine = np.asarray(model.apply({"params": params}, jnp.asarray(ids), deterministic=True))
    return float(np.max(np.abs(mine - ref.logits(ids))))


# --------------------------------------------------------------------------------------------
# Where our step's time goes.


def breakdown(ours: OurStep, batch: dict[str, np.ndarray], steps: int, out: common.JsonLines, size: str) -> None:
    """Times jitted parts of the step on the same weights and batch: the encoder forward with and
    without dropout, the MLM forward (mask, encoder, head at the masked slots, loss), forward+backward,
    and the whole step (adds clipping and AdamW). Differences locate the cost."""
    from climb_jax.models.roberta import LMHead, RobertaEncoder
    from climb_jax.train.masking import mlm_mask

    s = ours.setup.settings
    cfg = s.model
    encoder, head = RobertaEncoder(cfg), LMHead(cfg, cfg.vocab_size)
    params = jax.device_put(ours.initial_params)
    ids = jnp.asarray(batch["input_ids"])
    key = jax.random.PRNGKey(0)

    def loss(p, ids, key):
        k_mask, k_drop = jax.random.split(key)
        u = next(u for u in s.units if u.task == "mlm")
        mb = mlm_mask(k_mask, ids, ids >= NUM_SPECIAL, mask_probability=u.mask_probability,
                      random_probability=u.random_probability, unmask_probability=u.unmask_probability,
                      vocab_size=s.vocab_size)
        h = encoder.apply({"params": p["encoder"]}, mb.input_ids, None, deterministic=False, rngs={"dropout": k_drop})
        picked = jnp.take_along_axis(h, mb.positions[..., None], axis=1)
        logits = head.apply({"params": p["mlm_head"]}, picked)
        import optax

        nll = optax.softmax_cross_entropy_with_integer_labels(logits, mb.targets)
        return (nll * mb.weights).sum() / jnp.maximum(mb.weights.sum(), 1.0)

    parts = {
        "encoder_fwd_no_dropout": jax.jit(lambda p, i, k: encoder.apply({"params": p["encoder"]}, i, None,
                                                                        deterministic=True)),
        "encoder_fwd": jax.jit(lambda p, i, k: encoder.apply({"params": p["encoder"]}, i, None, deterministic=False,
                                                             rngs={"dropout": k})),
        "mlm_fwd": jax.jit(loss),
        "mlm_fwd_bwd": jax.jit(jax.value_and_grad(loss)),
    }
    runners = {}
    for name, fn in parts.items():
        jax.block_until_ready(fn(params, ids, key))

        def run(n, fn=fn):
            r = None
            for i in range(n):
                r = fn(params, ids, jax.random.fold_in(key, i))
            jax.block_until_ready(r)

        runners[name] = run
    runners["full_step"] = ours.run
    times = common.interleaved(runners, rounds=3, steps=steps)
    for name, t in times.items():
        out({"bench": "train_step_breakdown", "size": size, "part": name, **common.summarize(t)})


# --------------------------------------------------------------------------------------------


def bench_size(size: str, batch_size: int, seq: int, rounds: int, steps: int, peak: float, threads: int,
               out: common.JsonLines, want_breakdown: bool, profile_dir: str = "", dtype: str = "float32") -> dict:
    config = make_config(size, batch_size, seq, dtype)
    counter = CompileCounter()
    with counter:
        ours = OurStep(config, counter)
        ref = TorchStep(ours.setup.model, ours.initial_params, config.trainer, threads)
        batch = common.synthetic_batch(0, batch_size, seq, config.data.vocab_size)
        diff = parity(ours, ref, batch)
        ours.set_batch(batch)
        ref.set_batch(batch)
        # Warm-up: compile ours, let torch allocate; the first losses are at the initial weights.
        ours.run(1)
        ref.run(1)
        first = {"climb_jax": ours.last_loss, "torch": ref.last_loss}
        cpu: dict[str, list[float]] = {}
        times = common.interleaved({"climb_jax": ours.run, "torch": ref.run}, rounds=rounds, steps=steps, cpu=cpu)
        compiles = counter.count(STEP_NAME)
    tokens = batch_size * seq
    k = num_targets(seq, config.objective_curriculum.units.mlm.mask_probability)
    flops = common.flops_per_token(ours.setup.model, seq, head_positions=k)
    rows = {}
    for impl, t in times.items():
        summary = common.summarize(t, cpu[impl])
        row = {"bench": "train_step", "impl": impl, "size": size, "batch": batch_size, "seq": seq,
               "dtype": dtype if impl == "climb_jax" else "float32",
               "tokens_per_s": round(tokens / summary["step_s"], 1),
               "tokens_per_s_median": round(tokens / summary["step_s_median"], 1), **summary,
               "first_loss": round(first[impl], 4), "last_loss": round((ours if impl == "climb_jax" else ref).last_loss, 4)}
        if impl == "climb_jax":
            row["devices"] = ours.mesh.size
            row["compiles"] = compiles
            row["head_positions_per_row"] = k
        else:
            row["attn_implementation"] = ref.attn_implementation
            row["threads"] = threads
        rows[impl] = out(row)
    # bfloat16 matmul inputs round to 8 bits of mantissa: compare loosely then.
    tolerance = 1e-3 if dtype == "float32" else 0.1
    xla = ours.xla_flops()
    ours_tps, torch_tps = rows["climb_jax"]["tokens_per_s"], rows["torch"]["tokens_per_s"]
    model_fs = flops["model"] * ours_tps
    summary = {
        "bench": "train_step_summary", "size": size, "batch": batch_size, "seq": seq, "dtype": dtype,
        "ratio": round(ours_tps / torch_tps, 3),
        "ratio_median": round(rows["climb_jax"]["tokens_per_s_median"] / rows["torch"]["tokens_per_s_median"], 3),
        "ratio_cpu": round(rows["torch"]["cpu_s"] / rows["climb_jax"]["cpu_s"], 3),
        "model_flops_per_token": round(flops["model"]),
        "executed_flops_per_token": round(flops["executed"]),
        "xla_flops_per_token": None if xla is None else round(xla / tokens),
        "achieved_model_gflops": round(model_fs / 1e9, 2),
        "achieved_executed_gflops": round(flops["executed"] * ours_tps / 1e9, 2),
        "torch_achieved_gflops": round(flops["model"] * torch_tps / 1e9, 2),
        "peak_gflops": peak,
        "utilisation": round(model_fs / (peak * 1e9), 3),
        "executed_utilisation": round(flops["executed"] * ours_tps / (peak * 1e9), 3),
        "torch_utilisation": round(flops["model"] * torch_tps / (peak * 1e9), 3),
        "logits_max_abs_diff": float(f"{diff:.3g}"),
        "logits_tolerance": tolerance,
        "compiles": compiles,
        "target_ratio_1_5x": ours_tps / torch_tps >= 1.5,
        "target_utilisation_70pct": model_fs / (peak * 1e9) >= 0.70,
    }
    out(summary)
    if want_breakdown:
        breakdown(ours, batch, steps, out, size)
    if profile_dir:
        step_profile.profile_ours(ours, steps, out, size, os.path.join(profile_dir, size), flops["executed"] * tokens)
    return summary


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="`small` only, 3 rounds of 2 steps")
    mode.add_argument("--full", action="store_true", help="`small`, `medium` and `large`")
    mode.add_argument("--tiny", action="store_true", help="a 2-layer model, batch 8 x 32: checks the benchmark")
    parser.add_argument("--sizes", default="", help="comma-separated sizes (overrides the mode's)")
    parser.add_argument("--batch", type=int, default=0, help="global batch (default 32; 8 with --tiny)")
    parser.add_argument("--seq", type=int, default=0, help="sequence length (default 128; 32 with --tiny)")
    parser.add_argument("--rounds", type=int, default=0, help="interleaved rounds")
    parser.add_argument("--steps", type=int, default=0, help="steps per implementation per round")
    parser.add_argument("--dtype", default="float32", choices=choices_lib.DTYPES,
                        help="our compute dtype (model.dtype); the reference stays float32, as the reference ran")
    parser.add_argument("--breakdown", action="store_true", help="also time the parts of our step")
    parser.add_argument("--profile", default="", metavar="DIR",
                        help="also trace our step with jax.profiler into DIR and print where its time goes")
    parser.add_argument("--cpu_devices", type=int, default=0,
                        help="our run's mesh.cpu_devices: 0 = one XLA device per core (data parallel; the "
                             "recommended CPU setting), 1 = JAX's single CPU device")
    parser.add_argument("--out", default="", help="also append the JSON lines to this file")
    args = parser.parse_args(argv)
    mesh_lib.configure_cpu_devices(args.cpu_devices)  # before JAX starts

    if args.tiny:
        sizes, batch, seq, rounds, steps, peak_sizes = ["tiny"], 8, 32, 2, 2, (512,)
    elif args.full:
        sizes, batch, seq, rounds, steps, peak_sizes = ["small", "medium", "large"], 32, 128, 5, 2, (2048, 4096)
    elif args.quick:
        sizes, batch, seq, rounds, steps, peak_sizes = ["small"], 32, 128, 3, 2, (2048, 4096)
    else:
        sizes, batch, seq, rounds, steps, peak_sizes = ["small"], 32, 128, 6, 2, (2048, 4096)
    sizes = [s for s in args.sizes.split(",") if s] or sizes
    batch, seq = args.batch or batch, args.seq or seq
    rounds, steps = args.rounds or rounds, args.steps or steps

    import torch
    import transformers

    threads = common.usable_cores()
    out = common.JsonLines(args.out or None)
    out(common.environment("train_step", dtype=args.dtype, torch=torch.__version__, transformers=transformers.__version__,
                           torch_threads=threads, jax_threads="all cores (XLA CPU default)",
                           cpu_devices=args.cpu_devices,
                           omp_wait_policy=os.environ.get("OMP_WAIT_POLICY")))
    peak = common.matmul_peak(peak_sizes, dtype=args.dtype)
    out({"bench": "matmul_peak", "dtype": args.dtype, **peak,
         "torch_matmul_gflops_2048": common.torch_matmul_gflops(min(2048, max(peak_sizes)))})
    results = [out.records[-1]]
    for size in sizes:
        results.append(bench_size(size, batch, seq, rounds, steps, peak["peak_gflops"], threads, out,
                                  args.breakdown, args.profile, args.dtype))
    for s in results[1:]:
        if s["compiles"] != 1:
            raise SystemExit(f"the train step compiled {s['compiles']} times for {s['size']}; expected 1")
        if not s["logits_max_abs_diff"] < s["logits_tolerance"]:
            raise SystemExit(f"the reference and our model disagree on the same weights (max |diff| "
                             f"{s['logits_max_abs_diff']}) for {s['size']}")
    return out.records


if __name__ == "__main__":
    main()
