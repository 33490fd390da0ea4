"""Export a trained masked LM as a Hugging Face checkpoint.

The output directory loads with `RobertaPreLayerNormForMaskedLM.from_pretrained(dir)` and
`AutoTokenizer.from_pretrained(dir)`, which is what BabyLM-style evaluation pipelines expect.
Writing needs no torch: weights go through `safetensors.numpy` with the `{"format": "pt"}`
metadata that transformers checks for.

    python -m climb_jax.export --workdir=RUN --out=DIR [--step=N] [--verify]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from climb_jax.errors import ClimbError, print_error
from climb_jax.models import hf_convert
from climb_jax.models.roberta import RobertaConfig

WEIGHTS_NAME = "model.safetensors"
# Files a previous export leaves; anything else in a non-empty target directory is not ours.
_EXPORT_MARKERS = ("config.json", WEIGHTS_NAME)


def _check_target(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ClimbError(f"--out {out} is a file; give a directory to write the checkpoint into.")
    if out.is_dir() and any(out.iterdir()) and not all((out / m).exists() for m in _EXPORT_MARKERS):
        raise ClimbError(
            f"{out} is not empty and does not hold a previous export; choose an empty or new directory "
            "so that no unrelated files are overwritten."
        )


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def export_model(params: Mapping[str, Any], cfg: RobertaConfig, tokenizer, out_dir: str | os.PathLike) -> Path:
    """Writes `params` (our masked-LM tree) and `tokenizer` as a Hugging Face checkpoint in `out_dir`.

    Files are written to a temporary sibling directory first and then renamed into place, so no
    file under `out_dir` is ever half-written. A non-empty `out_dir` that is not a previous export
    is refused rather than mixed into. Returns the directory.
    """
    from safetensors.numpy import save_file

    out = Path(out_dir)
    _check_target(out)
    if tokenizer is not None and len(tokenizer) > cfg.vocab_size:
        raise ClimbError(
            f"the tokenizer has {len(tokenizer)} tokens but the model only {cfg.vocab_size} embeddings; "
            "export the tokenizer the run was trained with."
        )
    state_dict = hf_convert.to_hf_state_dict(params, cfg)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        save_file({k: np.ascontiguousarray(v) for k, v in state_dict.items()}, str(tmp / WEIGHTS_NAME),
                  metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(hf_convert.hf_config_dict(cfg), indent=2) + "\n")
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
        out.mkdir(exist_ok=True)
        mode = 0o666 & ~_umask()  # safetensors writes its file private; make it like any other
        for item in tmp.iterdir():
            if item.is_file():
                item.chmod(mode)
            os.replace(item, out / item.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def max_logit_difference(params: Mapping[str, Any], cfg: RobertaConfig, out_dir: str | os.PathLike,
                         sentences: Sequence[str]) -> float:
    """Largest |logit| difference between our model and the exported checkpoint loaded by
    transformers (PyTorch), over the non-pad positions of `sentences`. Needs torch."""
    import jax
    import jax.numpy as jnp
    import torch
    from transformers import AutoTokenizer, RobertaPreLayerNormForMaskedLM

    from climb_jax.models.roberta import RobertaForMaskedLM

    tok = AutoTokenizer.from_pretrained(str(out_dir))
    hf = RobertaPreLayerNormForMaskedLM.from_pretrained(str(out_dir)).eval()
    batch = tok(list(sentences), padding=True, return_tensors="np")
    with torch.no_grad():
        ref = hf(input_ids=torch.from_numpy(batch["input_ids"]),
                 attention_mask=torch.from_numpy(batch["attention_mask"])).logits.numpy()
    f32 = dataclasses.replace(cfg, dtype="float32")
    apply = jax.jit(lambda p, ids, mask: RobertaForMaskedLM(f32).apply({"params": p}, ids, mask))
    ours = np.asarray(apply(params, jnp.asarray(batch["input_ids"]), jnp.asarray(batch["attention_mask"])))
    keep = batch["attention_mask"].astype(bool)
    return float(np.abs(ours - ref)[keep].max())


_VERIFY_SENTENCES = ("The child is playing with a red ball.", "Where did the dog go?", "Yes.")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m climb_jax.export", description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", required=True, help="a training run directory (holds config.json, checkpoints/)")
    parser.add_argument("--out", required=True, help="directory to write the Hugging Face checkpoint into")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
    parser.add_argument("--verify", action="store_true",
                        help="reload the export with transformers (needs torch) and compare logits")
    args = parser.parse_args(argv)
    try:
        workdir = Path(args.workdir)
        if not workdir.is_dir():
            raise ClimbError(f"--workdir {workdir} does not exist; point it at a training run directory.")
        if not any(workdir.iterdir()):
            raise ClimbError(f"--workdir {workdir} is empty; it holds no training run to export.")
        from climb_jax.parallel.mesh import skip_absent_tpu
        from climb_jax.train.checkpoint import load_run  # late: the CLI needs the training stack

        skip_absent_tpu()
        run = load_run(str(workdir), args.step)
        out = export_model(run.params, run.model_config, run.tokenizer, args.out)
        print(f"exported step {run.step} of {workdir} to {out}")
        if args.verify:
            diff = max_logit_difference(run.params, run.model_config, out, _VERIFY_SENTENCES)
            print(f"max |logit difference| against transformers: {diff:.2e}")
            if diff > 1e-3:
                raise ClimbError(f"the exported model's logits differ by {diff:.2e} from ours; please report this.")
    except ClimbError as e:
        print_error(e)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
