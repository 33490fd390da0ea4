"""Export to a Hugging Face checkpoint that transformers reloads with the same logits."""

from __future__ import annotations

import dataclasses
import json
from types import SimpleNamespace

import jax
import numpy as np
import pytest

from climb_jax import export
from climb_jax.constants import SPECIAL_TOKENS
from climb_jax.data.corpus import EMBEDDED_DIR
from climb_jax.errors import ClimbError
from climb_jax.models.roberta import RobertaConfig, init_params

transformers = pytest.importorskip("transformers")

SENTENCES = ["Do you want to look at the book?", "The dog ran.", "Where is it?"]


@pytest.fixture(scope="module")
def tokenizer():
    """A small byte-level BPE trained on a slice of the corpus sample, with RoBERTa's specials as ids 0-4."""
    from tokenizers import ByteLevelBPETokenizer
    from tokenizers.processors import RobertaProcessing

    lines = []
    for name in ("aochildes", "brown_fiction"):
        with open(EMBEDDED_DIR / "train" / f"{name}.train", encoding="utf-8") as f:
            lines += [next(f) for _ in range(200)]
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(lines, vocab_size=400, min_frequency=2, special_tokens=list(SPECIAL_TOKENS),
                            show_progress=False)
    bpe.post_processor = RobertaProcessing(("</s>", 2), ("<s>", 0))
    tok = transformers.PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer, bos_token="<s>", pad_token="<pad>", eos_token="</s>",
        unk_token="<unk>", mask_token="<mask>", cls_token="<s>", sep_token="</s>", model_max_length=32)
    assert [tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS] == [0, 1, 2, 3, 4]
    return tok


@pytest.fixture(scope="module")
def model(tokenizer):
    cfg = RobertaConfig(vocab_size=len(tokenizer), hidden_size=32, num_layers=2, num_heads=2,
                        intermediate_size=64, max_position_embeddings=32)
    params = init_params(jax.random.key(0), cfg)
    # Non-trivial layer norms and biases, so that a mapping mistake shows in the logits.
    rs = np.random.RandomState(1)
    params = jax.tree_util.tree_map(lambda x: (np.asarray(x) + 0.05 * rs.normal(size=x.shape)).astype(np.float32),
                                    params)
    return cfg, params


def test_export_reloads_in_transformers_with_equal_logits(tmp_path, tokenizer, model):
    pytest.importorskip("torch", reason="needs the PyTorch reference: pip install -r requirements-reference.txt "
                                        "(see the README)")
    cfg, params = model
    out = export.export_model(params, cfg, tokenizer, tmp_path / "hf")
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "roberta-prelayernorm" and config["tie_word_embeddings"] is False
    assert config["architectures"] == ["RobertaPreLayerNormForMaskedLM"]

    hf, info = transformers.RobertaPreLayerNormForMaskedLM.from_pretrained(str(out), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert not hf.config.tie_word_embeddings
    assert hf.lm_head.decoder.weight.data_ptr() != hf.roberta_prelayernorm.embeddings.word_embeddings.weight.data_ptr()

    reloaded = transformers.AutoTokenizer.from_pretrained(str(out))
    for sentence in SENTENCES:
        ids = reloaded(sentence)["input_ids"]
        assert ids == tokenizer(sentence)["input_ids"] and ids[0] == 0 and ids[-1] == 2

    diff = export.max_logit_difference(params, cfg, out, SENTENCES)
    assert diff < 1e-4, diff


def test_export_overwrites_only_a_previous_export(tmp_path, tokenizer, model):
    cfg, params = model
    out = export.export_model(params, cfg, tokenizer, tmp_path / "hf")
    first = (out / "model.safetensors").read_bytes()
    export.export_model(jax.tree_util.tree_map(lambda x: x * 2, params), cfg, tokenizer, out)
    assert (out / "model.safetensors").read_bytes() != first
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left behind

    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(ClimbError, match="not empty"):
        export.export_model(params, cfg, tokenizer, other)
    assert [p.name for p in other.iterdir()] == ["keep.txt"]


def test_export_rejects_a_tokenizer_larger_than_the_model(tmp_path, tokenizer, model):
    cfg, params = model
    small = dataclasses.replace(cfg, vocab_size=len(tokenizer) - 1)
    with pytest.raises(ClimbError, match="tokenizer has"):
        export.export_model(params, small, tokenizer, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


def test_cli_reports_missing_and_empty_workdirs(tmp_path, capsys):
    assert export.main(["--workdir", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert export.main(["--workdir", str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 2
    assert "is empty" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_cli_exports_the_requested_step(tmp_path, tokenizer, model, monkeypatch, capsys):
    """The CLI plumbing, with the run loader replaced by a stand-in returning our params."""
    checkpoint = pytest.importorskip("climb_jax.train.checkpoint")
    cfg, params = model
    calls = []

    def fake_load_run(workdir, step=None):
        calls.append((workdir, step))
        return SimpleNamespace(config=None, params=params, step=step, model_config=cfg, tokenizer=tokenizer,
                               workdir=workdir)

    monkeypatch.setattr(checkpoint, "load_run", fake_load_run)
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{}")
    assert export.main(["--workdir", str(run), "--out", str(tmp_path / "hf"), "--step", "300"]) == 0
    assert calls == [(str(run), 300)]
    assert "exported step 300" in capsys.readouterr().out
    assert (tmp_path / "hf" / "model.safetensors").is_file()
