"""Bad input: every mistake a user can make in a corpus, a config or an evaluation file gets a message
that says what to fix, never a traceback from inside JAX; and nothing untrusted is ever unpickled.

Most cases call the function that raises, in this process; a few go through the command line to show
that the message reaches stderr as one `error: ...` line with exit status 2.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from climb_jax.config import schema
from climb_jax.data import corpus as corpus_lib
from climb_jax.data.dataset import prepare_data
from climb_jax.errors import CheckpointError, ConfigError, DataError
from tests.conftest import REPO
from tests.helpers import load_config, tiny_config

SOURCES = {"aochildes": 300, "switchboard": 120, "brown_fiction": 120}


def _head(src: Path, dst: Path, n: int) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    with open(src, encoding="utf-8") as f:
        dst.write_text("".join(next(f) for _ in range(n)), encoding="utf-8")


@pytest.fixture(scope="module")
def small_corpus(babylm_mini, tmp_path_factory) -> Path:
    """A few hundred lines of three babylm_mini sources, in the `train/ dev/` layout."""
    root = tmp_path_factory.mktemp("corpus")
    for split, scale in (("train", 1), ("dev", 4)):
        for source, n in SOURCES.items():
            _head(babylm_mini / split / f"{source}.{split}", root / split / f"{source}.{split}",
                  n // scale)
    return root


def data_cfg(corpus: Path, nltk_data: Path, **kw):
    c = schema.base_config().data
    c.update(dict(corpus=str(corpus), vocab_size=320, seq_len=32, nltk_data=str(nltk_data), num_workers=1))
    c.update(kw)
    return c


def cli(*args: str, env: dict | None = None, timeout: int = 180) -> subprocess.CompletedProcess:
    full = dict(os.environ, JAX_PLATFORMS="cpu", **(env or {}))
    return subprocess.run([sys.executable, "-m", "climb_jax.main", *args, "--progress=false", "--plot=false"],
                          cwd=REPO, env=full, capture_output=True, text=True, timeout=timeout)


def assert_clean_error(proc: subprocess.CompletedProcess, pattern: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and re.search(pattern, last), last


# --------------------------------------------------------------------------------------------
# Corpus.


def test_missing_corpus_directory(tmp_path, nltk_data):
    with pytest.raises(DataError, match=r"data.corpus='.*nowhere' is not a directory. Use 'embedded'"):
        prepare_data(data_cfg(tmp_path / "nowhere", nltk_data), tmp_path / "cache")


def test_missing_corpus_directory_through_the_command_line(tmp_path):
    proc = cli("--config=configs/vanilla.py:smoke", f"--config.data.corpus={tmp_path / 'nowhere'}",
               f"--workdir={tmp_path / 'run'}")
    assert_clean_error(proc, r"data.corpus='.*nowhere' is not a directory")
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_no_training_files(tmp_path, nltk_data):
    (tmp_path / "a" / "train").mkdir(parents=True)
    (tmp_path / "a" / "dev").mkdir()
    with pytest.raises(DataError, match=r"the training folder .*train holds no text files"):
        prepare_data(data_cfg(tmp_path / "a", nltk_data), tmp_path / "cache")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "notes.md").write_text("not a corpus\n")
    with pytest.raises(DataError, match=r"no training split found: in .* looked for a training folder"):
        prepare_data(data_cfg(tmp_path / "b", nltk_data), tmp_path / "cache")


def test_only_empty_training_files(tmp_path, nltk_data):
    for name in ("a.train", "b.train"):
        (tmp_path / "c" / "train").mkdir(parents=True, exist_ok=True)
        (tmp_path / "c" / "train" / name).write_bytes(b"")
    with pytest.raises(DataError, match=r"has no training text: every training file is empty \(.*a\.train"):
        prepare_data(data_cfg(tmp_path / "c", nltk_data), tmp_path / "cache")
    (tmp_path / "c" / "train" / "a.train").write_text("\n  \n\n")  # blank lines only
    with pytest.raises(DataError, match=r"no training text: its training files hold only blank lines"):
        prepare_data(data_cfg(tmp_path / "c", nltk_data), tmp_path / "cache")


def _copy(src: Path, dst: Path) -> Path:
    for p in src.rglob("*.*"):
        (dst / p.relative_to(src)).parent.mkdir(parents=True, exist_ok=True)
        (dst / p.relative_to(src)).write_bytes(p.read_bytes())
    return dst


@pytest.fixture(scope="module")
def messy_corpus(small_corpus, tmp_path_factory) -> Path:
    """The small corpus plus an empty training file and a Latin-1 one (4 undecodable bytes on 40 lines)."""
    root = _copy(small_corpus, tmp_path_factory.mktemp("messy"))
    (root / "train" / "empty.train").write_bytes(b"")
    latin = ("caf\u00e9 na\u00efve r\u00e9sum\u00e9 and more words here\n" * 40).encode("latin-1")
    (root / "train" / "latin.train").write_bytes(b"plain first line\n" + latin)
    return root


@pytest.fixture(scope="module")
def messy_data(messy_corpus, nltk_data, tmp_path_factory):
    cfg = data_cfg(messy_corpus, nltk_data, on_decode_error="skip")
    return prepare_data(cfg, tmp_path_factory.mktemp("messy_cache"), progress=False)


def test_empty_files_are_skipped_and_undecodable_bytes_counted(messy_data):
    m = messy_data.manifest
    assert [Path(p).name for p in m["corpus"]["skipped_empty"]] == ["empty.train"]
    assert "empty" not in messy_data.sources and "latin" in messy_data.sources
    bad = {Path(k).name: v for k, v in m["decode_errors"].items()}
    assert bad == {"latin.train": {"bytes": 40 * 4, "lines": 40}}
    assert len(messy_data.train) > 0


def test_undecodable_bytes_fail_mode_names_file_and_line(messy_corpus, nltk_data, tmp_path):
    cfg = data_cfg(messy_corpus, nltk_data, on_decode_error="fail")
    with pytest.raises(DataError, match=r"latin\.train, line 2: bytes .* are not valid UTF-8.*"
                                        r"data\.on_decode_error=skip"):
        prepare_data(cfg, tmp_path / "cache", progress=False)
    assert not list((tmp_path / "cache").glob("data-*/manifest.json"))  # nothing half-built left as complete
    assert not list((tmp_path / "cache").glob(".tmp-data-*"))


def test_a_file_of_random_bytes_stops_the_run_with_one_error_line(tmp_path):
    root = tmp_path / "corpus"
    for split in ("train", "dev"):
        (root / split).mkdir(parents=True)
        (root / split / f"words.{split}").write_text("a few plain words on a line\n" * 50)
    (root / "train" / "junk.train").write_bytes(np.random.default_rng(0).bytes(200_000))
    proc = cli("--config=configs/vanilla.py:smoke", f"--config.data.corpus={root}", f"--workdir={tmp_path / 'run'}")
    assert_clean_error(proc, r"corpus file .*junk\.train: 4\d\.\d% of its bytes .* are not valid UTF-8, more than "
                             r"data\.max_undecodable_fraction=0\.2.*set data\.max_undecodable_fraction=1 to train")
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_single_line_of_megabytes(small_corpus, nltk_data, tmp_path):
    root = _copy(small_corpus, tmp_path / "corpus")
    words = (small_corpus / "train" / "aochildes.train").read_text().split()
    line = " ".join(words[i % len(words)] for i in range(400_000))[:2_000_000]  # 2 MB, no newline at all
    (root / "train" / "long.train").write_text(line)
    cfg = data_cfg(root, nltk_data, max_train_words=6000, max_line_chars=5000)
    data = prepare_data(cfg, tmp_path / "cache", progress=False)
    long = data.manifest["splits"]["train"]["per_source"]["long"]
    assert long["lines"] >= 2  # cut at whitespace into pieces of at most max_line_chars
    assert long["words"] <= 6000 and long["rows"] > 0


def test_unknown_sources_for_a_source_order_curriculum(messy_data):
    from climb_jax.curriculum.data_curriculum import initial_scores

    run_cfg = schema.base_config()
    run_cfg.data_curriculum.scorer = "source_order"
    with pytest.raises(ConfigError, match=r"the source order 'spoken_first' gives no difficulty for the source\(s\) "
                                          r"latin. Sources found in the corpus: .*source_order=custom"):
        initial_scores(run_cfg, messy_data)
    run_cfg.data_curriculum.source_order = "custom"
    run_cfg.data_curriculum.source_difficulty = "aochildes:1,switchboard:2,brown_fiction:3"
    with pytest.raises(ConfigError, match=r"source\(s\) latin"):
        initial_scores(run_cfg, messy_data)
    run_cfg.data_curriculum.source_difficulty += ",latin:4"
    assert initial_scores(run_cfg, messy_data).shape == (len(messy_data.train),)


# --------------------------------------------------------------------------------------------
# Config.


def test_command_line_config_mistakes_are_one_line_errors(tmp_path):
    for args, pattern in [
        (["--config.trainer.lrr=1"], r"unknown config key in --config.trainer.lrr: there is no field 'lrr'. "
                                     r"Did you mean 'lr'\?"),
        (["--config.trainr.lr=1"], r"no field 'trainr'. Did you mean 'trainer'\?"),
        (["--config.trainer.lr=fast"], r"--config.trainer.lr=fast: could not convert string to float"),
    ]:
        assert_clean_error(cli("--config=configs/vanilla.py:smoke", *args, f"--workdir={tmp_path}"), pattern)
    assert_clean_error(cli("--config=configs/vanilla.py:smok", f"--workdir={tmp_path}"),
                       r"unknown preset word 'smok'. Did you mean 'smoke'\?")
    assert not any(tmp_path.iterdir())  # nothing was written


@pytest.mark.parametrize("arg, message", [
    ("trainer.lr=fast", r"'trainer.lr' takes a float, not 'fast'"),
    ("trainer.total_steps=many", r"'trainer.total_steps' takes a int, not 'many'"),
    ("trainer.async_checkpoints=maybe", r"takes a bool, not 'maybe'"),
    ("data.cache_dirr=/x", r"unknown config key 'data.cache_dirr'.*Did you mean 'cache_dir'"),
    ("tiny,bigger", r"unknown preset word 'bigger'"),
])
def test_preset_arguments(arg, message):
    with pytest.raises(ConfigError, match=message):
        load_config("vanilla", arg)


@pytest.mark.parametrize("section, values, message", [
    ("vocab_curriculum.pacing", dict(start_percent=0.9, end_percent=0.5),
     r"vocab_curriculum.pacing: pacing start_percent=0.9 must be smaller than end_percent=0.5"),
    ("data_curriculum.pacing", dict(starting_difficulty=1.5), r"data_curriculum.pacing: .*must lie in \[0, 1\]"),
    ("data_curriculum.pacing", dict(name="cubic"), r"data_curriculum.pacing.name='cubic' is not valid.*Choose one of: linear"),
    ("model", dict(hidden_size=100, num_heads=8), r"hidden_size=100 is not divisible by model.num_heads=8"),
    ("data", dict(vocab_size=260), r"data.vocab_size=260 is too small"),
    ("trainer", dict(warmup_steps=500, total_steps=300), r"warmup_steps=500 must lie in \[0, trainer.total_steps"),
])
def test_impossible_settings(section, values, message):
    c = load_config("vanilla", "smoke")
    target = c
    for part in section.split("."):
        target = target[part]
    target.update(values)
    with pytest.raises(ConfigError, match=message):
        schema.validate(c)


def test_objective_schedule_with_a_gap():
    c = load_config("objective_cl", "pos_nv_mlm,smoke")
    c.objective_curriculum.units.pos_nv.end = 0.1
    c.objective_curriculum.units.mlm.start = 0.25
    with pytest.raises(ConfigError, match=r"leaves training between 0.1 and 0.25 with no active unit"):
        schema.validate(c)
    c.objective_curriculum.units.mlm.start = 0.1
    c.objective_curriculum.units.mlm.end = 0.8
    with pytest.raises(ConfigError, match=r"between 0.8 and 1 with no active unit"):
        schema.validate(c)


def test_batch_not_divisible_by_the_device_count(tmp_path):
    proc = cli("--config=configs/vanilla.py:smoke", "--config.trainer.batch_size=12", f"--workdir={tmp_path}",
               env={"XLA_FLAGS": "--xla_force_host_platform_device_count=8"})
    assert_clean_error(proc, r"trainer.batch_size=12 is not divisible by the 8 devices .* use a multiple of 8")


def test_checkpoint_vocabulary_differs_from_the_tokenizer(small_corpus, nltk_data, tmp_path, caplog):
    """A rerun whose data settings give another vocabulary than the run's checkpoints were trained with:
    refused with the reason (not "unreadable", not a fallback), and the run's config.json and tokenizer
    are left as they were."""
    from climb_jax.train.checkpoint import Checkpointer
    from climb_jax.train.loop import Trainer
    from climb_jax.train.setup import RunSetup

    import jax

    c = tiny_config(tmp_path / "cache")
    c.data.update(corpus=str(small_corpus), vocab_size=320, max_train_words=0, max_eval_words=0)
    data = prepare_data(c.data, tmp_path / "cache", progress=False)
    vocab = len(data.tokenizer)
    workdir = tmp_path / "run"
    old = RunSetup.from_config(c, vocab_size=vocab + 40)
    ckpt = Checkpointer(workdir / "checkpoints", async_save=False)
    ckpt.save(20, old.init_state(0), {"step": 20})
    ckpt.close()
    (workdir / "config.json").write_text('{"original": true}')
    with pytest.raises(CheckpointError, match=rf"checkpoint of step 20 .* its vocabulary has {vocab + 40} tokens "
                                              rf"but the tokenizer of this run has {vocab}.*data.vocab_size"):
        Trainer(c, str(workdir), progress=False).run()
    assert json.loads((workdir / "config.json").read_text()) == {"original": True}
    assert not (workdir / "tokenizer").exists()
    assert (workdir / "checkpoints" / "20").exists()
    # The same checkpoint under its own config is no mismatch at all.
    reader = Checkpointer(workdir / "checkpoints", async_save=False)
    abstract = old.abstract_state(jax.sharding.SingleDeviceSharding(jax.devices()[0]))
    caplog.clear()
    with caplog.at_level("WARNING"):
        assert reader._shape_mismatch(20, abstract) == ""
        assert reader.restore_latest(abstract)[3] == 20
    reader.close()
    # Reading the shapes prints nothing a user would take for damage (orbax's "Metadata file does not exist").
    assert "does not exist" not in caplog.text, caplog.text


# --------------------------------------------------------------------------------------------
# Evaluation files.

GOOD = {"sentence_good": "A cat sleeps.", "sentence_bad": "A cat sleep."}


@pytest.mark.parametrize("lines, message", [
    ([GOOD, '{"sentence_good": "x", '], r"eval.blimp_dir: .*bad\.jsonl, line 2: not valid JSON"),
    ([GOOD, {"sentence_good": "only one"}], r"bad\.jsonl, line 2: missing key\(s\) sentence_bad"),
    ([{"sentence_bad": "only one"}], r"bad\.jsonl, line 1: missing key\(s\) sentence_good"),
    ([], r"bad\.jsonl is empty"),
])
def test_bad_evaluation_file_stops_the_run_before_training(lines, message, tmp_path):
    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "good.jsonl").write_text(json.dumps(GOOD) + "\n")
    (suite / "bad.jsonl").write_text("".join((l if isinstance(l, str) else json.dumps(l)) + "\n" for l in lines))
    from climb_jax.train.loop import Trainer

    c = load_config("vanilla", "smoke")
    c.eval.blimp_dir = str(suite)
    with pytest.raises(DataError, match=message):
        Trainer(c, str(tmp_path / "run"), progress=False)
    assert not (tmp_path / "run").exists()


def test_finetuning_labels_beyond_the_class_count(tmp_path):
    from climb_jax.eval import tasks

    rows = [{"sentence1": "a", "sentence2": "b", "label": 1}, {"sentence1": "c", "sentence2": "d", "label": 2}]
    (tmp_path / "rte.train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError, match=r"rte.train.jsonl:2: label 2 is outside \[0, 2\)"):
        tasks.load_split(tasks.BUILTIN_TASKS["rte"], tmp_path, "train")


# --------------------------------------------------------------------------------------------
# Nothing untrusted is executed or unpickled.

_FORBIDDEN = [
    (r"^\s*(import|from)\s+(c?pickle|dill|cloudpickle|shelve|marshal|joblib)\b", "a pickle-based loader"),
    (r"allow_pickle\s*=\s*True", "np.load with allow_pickle=True"),
    (r"\btorch\.load\s*\(", "torch.load (pickle)"),
    (r"\bread_pickle\s*\(", "pandas.read_pickle"),
    (r"trust_remote_code\s*=\s*True", "remote code from the Hugging Face Hub"),
]


def test_no_pickle_and_no_remote_code_in_the_package():
    found = []
    for path in sorted((REPO / "climb_jax").rglob("*.py")):
        for i, line in enumerate(path.read_text().splitlines(), 1):
            for pattern, what in _FORBIDDEN:
                if re.search(pattern, line):
                    found.append(f"{path.relative_to(REPO)}:{i}: {what}: {line.strip()}")
    assert not found, "\n".join(found)


def test_hugging_face_datasets_are_loaded_without_remote_code(monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(*args, **kwargs):
        calls.append(kwargs)
        return datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": ["a line of text"]})})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    cfg = schema.base_config().data
    cfg.corpus = "hf:someone/some-corpus"
    corpus = corpus_lib.find_corpus(cfg)
    assert calls and all(not c.get("trust_remote_code") for c in calls)
    assert [s.name for s in corpus.splits["train"]] == ["some-corpus"]
