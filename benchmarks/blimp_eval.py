"""BLiMP pseudo-log-likelihood throughput: our evaluator vs the BabyLM pipeline's way, same weights.

    python benchmarks/blimp_eval.py --quick            # 67 pairs (one per paradigm), 3 rounds
    python benchmarks/blimp_eval.py --pairs_per_file=5 --rounds=2 --threads=1   # per-core comparison

Ours: `climb_jax.eval.blimp.BlimpEvaluator` (JAX; masked copies bucketed by length into fixed
shapes, the vocabulary head run only at the masked position).
Reference: what the BabyLM 2023 evaluation pipeline does for encoders (`hf-mlm`), with Hugging
Face's `RobertaPreLayerNormForMaskedLM` in PyTorch: tokenize a group of sentences padded to the
longest, one masked copy per non-special token, one forward pass over all copies of the group
computing full logits [copies, L, V], then the log-softmax at each masked position.
`--ref_sentences_per_call` lists the group sizes to run: 1 is the pipeline's default (its
`batch_size=1`: the copies of one sentence per forward pass), 16 gives the reference larger,
more efficient batches.

Both run the `small` preset (8 layers, width 256) with a vocabulary-8192 byte-level BPE trained on
babylm_mini, with random weights converted by `climb_jax.models.hf_convert.to_hf_state_dict`.
Runs are interleaved (ours, reference, ours, ...) after one untimed warm-up each, so drifting
load on a shared machine affects both alike; CPU seconds are reported too, as a measure less
sensitive to other processes. Output: JSON lines, one per timed run, then a summary with the
ratios of median throughputs (wall clock and per CPU second) and `decisions_identical` (every
pair's good >= bad decision agrees between the implementations; asserted).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
if "--threads=1" in sys.argv or ("--threads", "1") in zip(sys.argv, sys.argv[1:]):  # before JAX starts
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1").strip()
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from climb_jax.config.schema import MODEL_SIZES  # noqa: E402
from climb_jax.constants import SPECIAL_TOKENS  # noqa: E402
from climb_jax.eval.blimp import BlimpEvaluator  # noqa: E402
from climb_jax.models.roberta import RobertaConfig, init_params  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DATA = Path(os.environ.get("CLIMB_SHARED", REPO.parent / "shared")) / "data"


def train_tokenizer(corpus_dir: Path, vocab_size: int, max_lines_per_file: int):
    """Byte-level BPE with RoBERTa's specials at ids 0-4 and a `<s> … </s>` post-processor."""
    from tokenizers import ByteLevelBPETokenizer, processors
    from transformers import PreTrainedTokenizerFast

    def lines():
        for path in sorted((corpus_dir / "train").glob("*.train")):
            with open(path, encoding="utf-8") as f:
                for i, line in enumerate(f):
                    if max_lines_per_file and i >= max_lines_per_file:
                        break
                    yield line

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(lines(), vocab_size=vocab_size, min_frequency=2, special_tokens=list(SPECIAL_TOKENS),
                            show_progress=False)
    bpe.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    return PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>", unk_token="<unk>", mask_token="<mask>")


def build_torch_model(params, cfg: RobertaConfig):
    import torch
    from transformers import RobertaPreLayerNormConfig, RobertaPreLayerNormForMaskedLM

    from climb_jax.models.hf_convert import hf_config_dict, to_hf_state_dict

    hf_cfg = {k: v for k, v in hf_config_dict(cfg).items() if k not in ("architectures", "model_type")}
    model = RobertaPreLayerNormForMaskedLM(RobertaPreLayerNormConfig(**hf_cfg))
    state = {k: torch.from_numpy(v) for k, v in to_hf_state_dict(params, cfg).items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise RuntimeError(f"state dict mismatch: missing {missing}, unexpected {unexpected}")
    return model.eval()


def reference_scores(model, tokenizer, sentences, sentences_per_call: int) -> tuple[np.ndarray, int]:
    """The BabyLM pipeline's PLL for encoders (natural log here; the pipeline uses log2)."""
    import torch

    special = {tokenizer.pad_token_id, tokenizer.cls_token_id or tokenizer.bos_token_id,
               tokenizer.sep_token_id or tokenizer.eos_token_id}
    scores = np.zeros(len(sentences), dtype=np.float64)
    copies_run = 0
    with torch.inference_mode():
        for start in range(0, len(sentences), sentences_per_call):
            chunk = sentences[start:start + sentences_per_call]
            enc = tokenizer(chunk, padding="longest", return_tensors="pt")
            copies, masks, owners, positions = [], [], [], []
            for i, (ids, am) in enumerate(zip(enc["input_ids"], enc["attention_mask"])):
                effective = sum(int(t) not in special for t in ids)
                for pos in range(1, effective + 1):
                    masked = ids.clone()
                    masked[pos] = tokenizer.mask_token_id
                    copies.append(masked)
                    masks.append(am)
                    owners.append(i)
                    positions.append(pos)
            ids = torch.stack(copies)
            logits = model(ids, attention_mask=torch.stack(masks)).logits  # full [C, L, V]
            rows = torch.arange(len(copies))
            pos = torch.tensor(positions)
            at = logits[rows, pos]
            logprobs = at - at.logsumexp(-1, keepdim=True)
            targets = enc["input_ids"][torch.tensor(owners), pos]
            token_lp = logprobs[rows, targets].double().numpy()
            np.add.at(scores, start + np.asarray(owners), token_lp)
            copies_run += len(copies)
    return scores, copies_run


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="1 pair per file (67 pairs), 3 rounds")
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--suite", default="embedded")
    p.add_argument("--pairs_per_file", type=int, default=20)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batch_size", type=int, default=256, help="our masked copies per call")
    p.add_argument("--ref_sentences_per_call", default="1,16", help="comma-separated group sizes")
    p.add_argument("--tokenizer_lines", type=int, default=40_000, help="lines per source for the BPE")
    p.add_argument("--weight_scale", type=float, default=4.0,
                   help="multiplies the random kernels so predictions are not near-uniform (clear decisions)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cpu_devices", type=int, default=0,
                   help="ours: mesh.cpu_devices (0 = one XLA device per core, the copies split over them; "
                        "1 = JAX's single CPU device). Ignored with --threads=1")
    p.add_argument("--threads", type=int, default=0,
                   help="1: one compute thread for both (XLA and torch), a per-core comparison that other "
                        "processes on a shared machine disturb less; 0: library defaults")
    args = p.parse_args(argv)
    if args.quick:
        args.pairs_per_file, args.rounds = 1, 3
    groups = [int(g) for g in args.ref_sentences_per_call.split(",") if g.strip()]

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    mesh = None
    if args.threads != 1:
        from ml_collections import ConfigDict

        from climb_jax.parallel import mesh as mesh_lib

        mesh_lib.configure_cpu_devices(args.cpu_devices)  # before JAX starts
        mesh = mesh_lib.create_mesh(ConfigDict(dict(data=-1, fsdp=1, model=1)))
    t0 = time.perf_counter()
    tok = train_tokenizer(Path(args.data) / "babylm_mini", 8192, args.tokenizer_lines)
    cfg = RobertaConfig(vocab_size=len(tok), **MODEL_SIZES["small"], max_position_embeddings=512)
    params = init_params(jax.random.PRNGKey(args.seed), cfg)
    params = jax.tree_util.tree_map(lambda x: x * args.weight_scale if x.ndim >= 2 else x, params)
    params = jax.device_get(params)
    torch_model = build_torch_model(params, cfg)
    evaluator = BlimpEvaluator(cfg, tok, args.suite, batch_size=args.batch_size,
                               max_pairs_per_file=args.pairs_per_file, mesh=mesh)
    sentences = [s for pair in evaluator.suite.pairs for s in (pair.good, pair.bad)]
    setup_s = time.perf_counter() - t0
    print(json.dumps({"setup": True, "pairs": evaluator.num_pairs, "sentences": len(sentences),
                      "vocab": len(tok), "jax_devices": str(jax.devices()), "torch_threads": torch.get_num_threads(),
                      "setup_s": round(setup_s, 2)}), flush=True)

    def run_ours():
        start = time.perf_counter()
        good, bad, stats = evaluator.pair_scores(params)
        return time.perf_counter() - start, good, bad, stats["num_copies"]

    def run_ref(group: int):
        def run():
            start = time.perf_counter()
            scores, copies = reference_scores(torch_model, tok, sentences, group)
            return time.perf_counter() - start, scores[0::2], scores[1::2], copies
        return run

    impls = [("climb_jax", run_ours)] + [(f"hf_torch_reference_{g}", run_ref(g)) for g in groups]
    warm = time.perf_counter()
    _, good_a, bad_a, _ = run_ours()  # compiles
    compile_s = time.perf_counter() - warm
    reference_scores(torch_model, tok, sentences[:32], 16)  # warm-up

    results = {name: [] for name, _ in impls}
    for r in range(args.rounds):
        for impl, fn in impls if r % 2 == 0 else impls[::-1]:
            cpu = time.process_time()
            seconds, good, bad, copies = fn()
            cpu = time.process_time() - cpu
            line = {"impl": impl, "round": r, "seconds": round(seconds, 3), "cpu_seconds": round(cpu, 3),
                    "sentences": len(sentences), "copies": copies,
                    "sentences_per_s": round(len(sentences) / seconds, 2), "copies_per_s": round(copies / seconds, 1),
                    "copies_per_cpu_s": round(copies / cpu, 1)}
            results[impl].append((line, good, bad))
            print(json.dumps(line), flush=True)

    ours_dec = good_a >= bad_a
    med = {k: statistics.median(x[0]["sentences_per_s"] for x in v) for k, v in results.items()}
    # Throughput per CPU-second is less sensitive to other processes on a shared machine.
    med_cpu = {k: statistics.median(x[0]["copies_per_cpu_s"] for x in v) for k, v in results.items()}
    summary = {"summary": True, "quick": args.quick, "pairs": evaluator.num_pairs,
               "ours_sentences_per_s": med["climb_jax"],
               "ours_compile_and_first_run_s": round(compile_s, 2), "accuracy_ours": float(ours_dec.mean())}
    identical, max_diff = True, 0.0
    for g in groups:
        name = f"hf_torch_reference_{g}"
        for _, good_b, bad_b in results[name]:
            identical &= bool(np.array_equal(ours_dec, good_b >= bad_b))
            max_diff = max(max_diff, float(np.max(np.abs(np.concatenate([good_a - good_b, bad_a - bad_b])))))
        summary[f"reference_{g}_sentences_per_s"] = med[name]
        summary[f"ratio_vs_reference_{g}"] = round(med["climb_jax"] / med[name], 2)
        summary[f"cpu_time_ratio_vs_reference_{g}"] = round(med_cpu["climb_jax"] / med_cpu[name], 2)
    summary["ratio"] = min(summary[f"ratio_vs_reference_{g}"] for g in groups)  # against the fastest reference
    summary["max_abs_score_diff"] = max_diff
    summary["decisions_identical"] = identical
    print(json.dumps(summary), flush=True)
    assert identical, "pair decisions differ between the implementations"


if __name__ == "__main__":
    main()
