"""Peak resident memory of a training process on babylm_mini and on a corpus 4x larger.

  python benchmarks/memory.py --quick          # 30 steps per run
  python benchmarks/memory.py                  # 60 steps per run
  python benchmarks/memory.py --workdir DIR    # keep (and reuse) the corpora, caches and runs in DIR

The training data is memory-mapped (`prepare_data` writes `.npy` arrays that the trainer opens with
`mmap_mode="r"`), so a training process should page in only the rows it samples: its peak resident
set must stay flat when the corpus grows. Method:

  1. the larger corpus is babylm_mini with every training file repeated 4 times (dev and test are
     copied unchanged: evaluation is off, and only the training split grows);
  2. for each corpus the data cache is prepared beforehand, in a separate process, with exactly the
     data settings of the training run, so only training is measured (the run is checked to have
     found the cache: it creates no new cache entry);
  3. each training run is a fresh `python -m climb_jax.main --config=configs/vanilla.py:smoke` process
     on the whole corpus (`data.max_train_words=0`), a few dozen steps, no evaluation; its peak
     resident set is `ru_maxrss` from `os.wait4` on that process (the kernel's high-water mark), and,
     as a cross-check, the highest RSS that psutil saw while polling it every 50 ms.

One JSON line per run and a summary with the growth (target: under 10%).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import common  # noqa: E402

REPO = common.REPO
TARGET_GROWTH = 0.10


def shared_dir() -> Path:
    return Path(os.environ.get("CLIMB_SHARED", REPO.parent / "shared"))


def overrides(corpus: Path, cache: Path, nltk_data: Path, steps: int) -> list[tuple[str, str]]:
    """The run's settings on top of `configs/vanilla.py:smoke` (the same list builds the data cache)."""
    return [
        ("data.corpus", str(corpus)),
        ("data.cache_dir", str(cache)),
        ("data.nltk_data", str(nltk_data)),
        ("data.max_train_words", "0"),  # the whole corpus: that is what grows
        ("trainer.total_steps", str(steps)),
        ("trainer.warmup_steps", str(max(1, steps // 10))),
        ("trainer.log_every", str(max(1, steps // 3))),
        ("trainer.checkpoint_every", str(steps)),
        ("trainer.async_checkpoints", "False"),
        ("eval.at_end", "False"),
    ]


def repeat_corpus(src: Path, dst: Path, factor: int) -> None:
    """`src` with every training file's text repeated `factor` times; dev and test copied."""
    if (dst / ".complete").exists():
        return
    shutil.rmtree(dst, ignore_errors=True)
    for split in ("train", "dev", "test"):
        (dst / split).mkdir(parents=True)
        for f in sorted((src / split).iterdir()):
            if not f.is_file():
                continue
            if split == "train":
                data = f.read_bytes()
                if data and not data.endswith(b"\n"):
                    data += b"\n"
                (dst / split / f.name).write_bytes(data * factor)
            else:
                shutil.copyfile(f, dst / split / f.name)
    (dst / ".complete").write_text("ok\n")


def corpus_words(corpus: Path) -> int:
    return sum(len(f.read_bytes().split()) for f in (corpus / "train").iterdir() if f.is_file())


def _prepare_child(pairs_json: str) -> None:
    """(In a child process) builds the run's data config and prepares its cache."""
    from climb_jax.config import schema
    from climb_jax.data.dataset import prepare_data

    config = common.load_config("vanilla", "smoke")
    pairs = json.loads(pairs_json)
    for key, value in pairs:
        schema.set_path(config, key, value)
    data = prepare_data(config.data, Path(config.data.cache_dir), progress=False)
    print(json.dumps({"train_rows": len(data.train), "cache": str(data.directory)}), flush=True)


def cache_entries(cache: Path) -> set[str]:
    return {p.name for p in cache.iterdir()} if cache.exists() else set()


def run_measured(cmd: list[str], env: dict, log: Path) -> dict:
    """Runs `cmd` to completion; its peak RSS from wait4 and from polling."""
    import psutil

    with open(log, "w") as f:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=str(REPO))
        polled = {"max": 0}
        done = threading.Event()

        def poll():
            try:
                p = psutil.Process(proc.pid)
                while not done.is_set():
                    polled["max"] = max(polled["max"], p.memory_info().rss)
                    time.sleep(0.05)
            except psutil.Error:
                pass

        th = threading.Thread(target=poll, daemon=True)
        th.start()
        _, status, usage = os.wait4(proc.pid, 0)
        done.set()
        th.join()
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - t0
    return {"returncode": proc.returncode, "ru_maxrss_mb": round(usage.ru_maxrss / 1024, 1),
            "polled_max_rss_mb": round(polled["max"] / 2 ** 20, 1), "wall_s": round(wall, 1)}


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="30 training steps per run")
    parser.add_argument("--steps", type=int, default=0, help="training steps per run (default 60; 30 with --quick)")
    parser.add_argument("--factor", type=int, default=4, help="how many times the larger corpus repeats the files")
    parser.add_argument("--corpus", default="", help="the base corpus (default: the shared babylm_mini)")
    parser.add_argument("--nltk-data", default="", help="NLTK data folder (default: the shared nltk_data)")
    parser.add_argument("--workdir", default="", help="keep corpora, caches and runs here (reused when present)")
    parser.add_argument("--out", default="", help="also append the JSON lines to this file")
    parser.add_argument("--_prepare", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args._prepare:
        _prepare_child(args._prepare)
        return []

    steps = args.steps or (30 if args.quick else 60)
    base = Path(args.corpus) if args.corpus else shared_dir() / "data" / "babylm_mini"
    nltk_data = Path(args.nltk_data) if args.nltk_data else shared_dir() / "nltk_data"
    for path, what in ((base / "train", "--corpus"), (nltk_data, "--nltk-data")):
        if not path.exists():
            raise SystemExit(f"{path} does not exist; pass {what} (or set CLIMB_SHARED to the shared data folder)")
    root = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="climb_memory_"))
    root.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "cpu"), "NLTK_DATA": str(nltk_data)}

    out = common.JsonLines(args.out or None)
    out(common.environment("memory", steps=steps, factor=args.factor, workdir=str(root)))
    big = root / f"corpus_x{args.factor}"
    repeat_corpus(base, big, args.factor)
    corpora = {"x1": base, f"x{args.factor}": big}
    rows = {}
    try:
        for label, corpus in corpora.items():
            cache = root / f"cache_{label}"
            pairs = overrides(corpus, cache, nltk_data, steps)
            t0 = time.perf_counter()
            prep = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--_prepare", json.dumps(pairs)],
                                  env=env, cwd=str(REPO), capture_output=True, text=True)
            if prep.returncode != 0:
                raise SystemExit(f"preparing the data cache for {corpus} failed:\n{prep.stderr[-3000:]}")
            info = json.loads(prep.stdout.strip().splitlines()[-1])
            prep_s = time.perf_counter() - t0
            before = cache_entries(cache)
            workdir = root / f"run_{label}"
            shutil.rmtree(workdir, ignore_errors=True)
            cmd = [sys.executable, "-m", "climb_jax.main", "--config=configs/vanilla.py:smoke",
                   f"--workdir={workdir}", "--noprogress", "--noplot"] + [f"--config.{k}={v}" for k, v in pairs]
            measured = run_measured(cmd, env, root / f"train_{label}.log")
            if measured["returncode"] != 0:
                tail = (root / f"train_{label}.log").read_text()[-3000:]
                raise SystemExit(f"the training run on {corpus} failed (exit {measured['returncode']}):\n{tail}")
            cache_hit = cache_entries(cache) == before
            data_dir = Path(info["cache"])
            array_mb = sum(f.stat().st_size for f in data_dir.glob("**/*.npy")) / 2 ** 20
            rows[label] = out({"bench": "memory", "corpus": label, "train_words": corpus_words(corpus),
                               "train_rows": info["train_rows"], "cache_arrays_mb": round(array_mb, 1),
                               "steps": steps, "cache_hit": cache_hit, "prepare_s": round(prep_s, 1), **measured})
            if not cache_hit:
                raise SystemExit(f"the training run on {corpus} prepared its own data cache, so its memory includes "
                                 "data preparation; the benchmark's data settings are out of step with the run's")
    finally:
        if not args.workdir:
            shutil.rmtree(root, ignore_errors=True)
    small, large = rows["x1"], rows[f"x{args.factor}"]
    growth = large["ru_maxrss_mb"] / small["ru_maxrss_mb"] - 1.0
    out({"bench": "memory_summary", "factor": args.factor,
         "rows_ratio": round(large["train_rows"] / small["train_rows"], 2),
         "peak_rss_mb_x1": small["ru_maxrss_mb"], f"peak_rss_mb_x{args.factor}": large["ru_maxrss_mb"],
         "growth": round(growth, 4),
         "polled_growth": round(large["polled_max_rss_mb"] / max(small["polled_max_rss_mb"], 1e-9) - 1.0, 4),
         "target_growth": TARGET_GROWTH, "target_met": growth < TARGET_GROWTH})
    return out.records


if __name__ == "__main__":
    main()
