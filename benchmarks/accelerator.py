"""One GPU: tokens/s and MFU of `small` and `large` in bfloat16 against the PyTorch reference on the same
GPU, then a few minutes of `small` on babylm_mini scored on BLiMP filtered. One JSON object per line.

  python benchmarks/accelerator.py                    # on a GPU machine, well inside 15 minutes
  python benchmarks/accelerator.py --sizes=small --train_minutes=0     # throughput only
  python benchmarks/accelerator.py --quick            # the benchmark's own logic, on CPU, in a minute

Install first (the jax pin's CUDA wheel): `pip install -r requirements-dev.txt "jax[cuda13]==0.10.2"`,
and a CUDA build of the pinned torch for the reference (without one its lines say so and are skipped);
the shared data (babylm_mini, blimp_filtered) is read from `--data` (default ../shared/data).

Throughput: our train step exactly as training compiles it (`RunSetup.compile`, the `configs/vanilla.py`
preset of each size with `model.dtype=bfloat16`, global batch `--batch` x 128 tokens, the state
donated), timed in interleaved rounds against the reference's stack on the same GPU and weights:
Hugging Face `RobertaPreLayerNormForMaskedLM` under `torch.autocast(bfloat16)` with torch AdamW, the
linear schedule and Hugging Face's masking rule, done on the GPU (see benchmarks/train_step.py for the
CPU version of the same pair). Each line gives tokens/s, the step's compile count (must be 1), and
MFU: model FLOPs per token (`common.flops_per_token`) x tokens/s over the chip's dense bfloat16 peak
from `climb_jax.preflight.accelerators` (null for a GPU the table does not know).

Training: `python -m climb_jax.main --config=configs/vanilla.py:small,bf16` on babylm_mini for as many
steps as `--train_minutes` allow at the measured step time (data preparation and evaluation come on
top), evaluated at the end on BLiMP filtered; its eval JSON's overall accuracy is reported beside
chance (0.5).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from benchmarks import common  # noqa: E402

REPO = common.REPO


def make_config(size: str, batch: int, seq: int, dtype: str):
    config = common.load_config("vanilla", "tiny" if size == "tiny" else size)
    if size == "tiny":
        common.shrink_to_tiny(config, seq=seq)
    config.data.seq_len = seq
    config.trainer.batch_size = batch
    config.model.dtype = dtype
    return config


def chip_of(device) -> dict:
    """The table's figures for the device, or nulls (a CPU, or a GPU the table does not know)."""
    from climb_jax.preflight import accelerators

    chip = accelerators.gpu_chip(device.device_kind) if device.platform == "gpu" else None
    return {"device_kind": device.device_kind, "platform": device.platform,
            "peak_bf16_flops": chip.peak_bf16_flops if chip else None, "chip": chip.name if chip else None}


def torch_step(model_cfg, params, trainer_cfg, device: str, bf16: bool):
    """The reference's step on `device` (see the module docstring), built on torch_reference.TorchStep."""
    import torch

    from benchmarks.torch_reference import TorchStep
    from climb_jax.constants import MASK_ID, NUM_SPECIAL

    class DeviceTorchStep(TorchStep):
        def __init__(self):
            super().__init__(model_cfg, params, trainer_cfg, threads=common.usable_cores())
            self.model.to(device)  # moves the parameters in place: the optimizer keeps them
            self.gen = torch.Generator(device=device).manual_seed(0)

        def set_batch(self, batch):
            self.batch = torch.from_numpy(np.asarray(batch["input_ids"], np.int64)).to(device)

        def mask(self, ids):
            """Hugging Face's rule (15% of non-special tokens; 80% <mask>, 10% random, 10% kept), on `device`."""
            def coin(p):
                return torch.bernoulli(torch.full(ids.shape, p, device=device), generator=self.gen).bool()

            masked = coin(self.mask_probability) & (ids >= NUM_SPECIAL)
            labels = torch.where(masked, ids, torch.full_like(ids, -100))
            replaced = coin(0.8) & masked
            rand = coin(0.5) & masked & ~replaced
            words = torch.randint(self.vocab, ids.shape, generator=self.gen, device=device)
            inputs = torch.where(replaced, torch.full_like(ids, MASK_ID), ids)
            return torch.where(rand, words, inputs), labels

        def forward_context(self):
            return torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16, enabled=bf16)

        def synchronize(self):
            if device.startswith("cuda"):
                torch.cuda.synchronize()

    return DeviceTorchStep()


def throughput(size: str, args, emit) -> dict:
    """Our step against the reference on one size; returns the summary line."""
    import jax

    from benchmarks.train_step import STEP_NAME, OurStep
    from climb_jax.train.compile_count import CompileCounter

    config = make_config(size, args.batch, args.seq, args.dtype)
    counter = CompileCounter()
    with counter:
        ours = OurStep(config, counter)
        batch = common.synthetic_batch(0, args.batch, args.seq, ours.setup.model.vocab_size)
        ours.set_batch(batch)
        runners = {"ours": ours.run}
        ref = None
        device = "cuda" if jax.devices()[0].platform == "gpu" else "cpu"
        if device == "cuda" and not args.no_torch:
            import torch

            if not torch.cuda.is_available():
                emit({"bench": "accelerator", "size": size, "impl": "torch",
                      "skipped": "this torch build has no CUDA: install a CUDA build of the pinned torch"})
                args.no_torch = True
        if not args.no_torch:
            ref = torch_step(ours.setup.model, ours.initial_params, config.trainer, device, args.dtype == "bfloat16")
            ref.set_batch(batch)
            runners["torch"] = ref.run
        for run in runners.values():
            run(2)  # compile / warm up
        times = common.interleaved(runners, rounds=args.rounds, steps=args.steps)
        compiles = counter.count(STEP_NAME)
    chip = chip_of(jax.devices()[0])
    tokens = args.batch * args.seq
    per_token = common.flops_per_token(ours.setup.model, args.seq)["model"]
    out = {"bench": "accelerator", "size": size, "dtype": args.dtype, "batch": args.batch, "seq": args.seq,
           "devices": jax.device_count(), **chip, "train_step_compiles": compiles}
    base = dict(out)
    for name, t in times.items():
        s = common.summarize(t)
        rate = tokens / s["step_s"]
        mfu = per_token * rate / (chip["peak_bf16_flops"] * jax.device_count()) if chip["peak_bf16_flops"] else None
        emit({**base, "impl": name, "tokens_per_s": round(rate, 1), "mfu": None if mfu is None else round(mfu, 4),
              "last_loss": (ours if name == "ours" else ref).last_loss, **s})
        out[f"{name}_tokens_per_s"] = round(rate, 1)
    if "torch_tokens_per_s" in out:
        out["speedup_vs_torch"] = round(out["ours_tokens_per_s"] / out["torch_tokens_per_s"], 3)
    out["bench"] = "accelerator_summary"
    out["model_flops_per_token"] = per_token
    return emit(out)


def train_and_score(args, step_s: float, emit) -> dict:
    """`small` on babylm_mini for about `--train_minutes` of steps, then BLiMP filtered."""
    data = Path(args.data)
    corpus, blimp = data / "babylm_mini", data / "blimp_filtered"
    if not corpus.exists() or not blimp.exists():
        return emit({"bench": "accelerator_training", "skipped": f"{corpus} or {blimp} is missing"})
    steps = max(100, int(args.train_minutes * 60 / max(step_s, 1e-3)) // 100 * 100)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="accelerator_train_"))
    argv = [sys.executable, "-m", "climb_jax.main", "--config=configs/vanilla.py:small,bf16", f"--workdir={workdir}",
            f"--config.data.corpus={corpus}", f"--config.eval.blimp_dir={blimp}", "--config.eval.supplement_dir=",
            f"--config.trainer.total_steps={steps}", f"--config.trainer.warmup_steps={max(steps // 10, 1)}",
            f"--config.trainer.batch_size={args.batch}", "--config.trainer.eval_every=0",
            f"--config.trainer.checkpoint_every={steps}", "--noprogress", "--noplot"]
    t0 = time.perf_counter()
    result = subprocess.run(argv, cwd=REPO, capture_output=True, text=True)
    rec = {"bench": "accelerator_training", "steps": steps, "batch": args.batch, "workdir": str(workdir),
           "seconds": round(time.perf_counter() - t0, 1), "returncode": result.returncode}
    found = sorted((workdir / "eval").glob("step_*.json")) if (workdir / "eval").exists() else []
    if result.returncode or not found:
        rec["stderr_tail"] = result.stderr[-2000:]
        return emit(rec)
    ev = json.loads(found[-1].read_text())
    rec["blimp_filtered"] = ev.get("blimp", {}).get("overall")
    rec["chance"] = 0.5
    metrics = workdir / "metrics.jsonl"
    if metrics.exists():
        lines = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
        lines = [line for line in lines if "loss" in line]  # not the dev-perplexity measurements' lines
        if lines:
            rec["final_loss"] = lines[-1].get("loss")
            rec["tokens_per_s_in_training"] = lines[-1].get("tokens_per_s")
    return emit(rec)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="check the benchmark itself: the tiny model in float32, a few steps, no training")
    parser.add_argument("--sizes", default="small,large", help="comma-separated model sizes")
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
    parser.add_argument("--batch", type=int, default=128, help="global batch (the presets' 128)")
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20, help="steps per timed round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no_torch", action="store_true", help="skip the PyTorch reference")
    parser.add_argument("--train_minutes", type=float, default=4.0, help="training budget (0: no training run)")
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data"), help="folder with babylm_mini and blimp_filtered")
    parser.add_argument("--workdir", default=None, help="the training run's workdir (default: a temporary folder)")
    parser.add_argument("--out", default=None, help="also append the JSON lines to this file")
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.dtype, args.batch, args.seq, args.steps, args.rounds, args.train_minutes = (
            "tiny", "float32", 8, 32, 2, 2, 0.0)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import jax

    emit = common.JsonLines(args.out)
    dev = jax.devices()[0]
    emit(common.environment("accelerator", device_kind=dev.device_kind, platform=dev.platform))
    if dev.platform != "gpu" and not args.quick:
        print("note: no GPU found; the figures below are this machine's CPU", file=sys.stderr)
    summaries = [throughput(size, args, emit) for size in args.sizes.split(",") if size]
    if args.train_minutes > 0:
        small = next((s for s in summaries if s["size"] == "small"), None)
        step_s = args.batch * args.seq / small["ours_tokens_per_s"] if small else 0.1
        train_and_score(args, step_s, emit)
    return 0


if __name__ == "__main__":
    sys.exit(main())
