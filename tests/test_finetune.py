"""Fine-tuning: task descriptions and their validation, configs, and a tiny encoder on a slice of RTE."""

import json
import types
from pathlib import Path

import jax
import numpy as np
import pytest
from tokenizers import ByteLevelBPETokenizer, Tokenizer
from tokenizers.processors import RobertaProcessing
from transformers import PreTrainedTokenizerFast

from climb_jax.constants import SPECIAL_TOKENS
from climb_jax.errors import ConfigError, DataError
from climb_jax.eval import finetune, tasks
from climb_jax.models.roberta import RobertaConfig, init_params
from climb_jax.train.compile_count import CompileCounter


def _write(path: Path, records) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


# ------------------------------------------------------------------------------------------------
# Task descriptions.


def test_builtin_tasks_read_the_shared_files(shared_data):
    glue = shared_data / "glue_filtered"
    for name, split in (("rte", "train"), ("mrpc", "valid"), ("wsc", "train"), ("boolq", "valid")):
        data = tasks.load_split(tasks.BUILTIN_TASKS[name], glue, split, max_examples=5)
        assert len(data) == 5 and data.labels.dtype == np.int32
        assert set(data.labels.tolist()) <= {0, 1}
        assert all(len(t) == 2 and all(t) for t in data.texts)
    wsc = tasks.load_split(tasks.BUILTIN_TASKS["wsc"], glue, "train", max_examples=1)
    first = json.loads((glue / "wsc.train.jsonl").read_text().splitlines()[0])
    assert wsc.texts[0] == (f"{first['span2_text']}: {first['text']}", first["span1_text"])
    assert tasks.BUILTIN_TASKS["mrpc"].primary_metric == "f1"
    assert tasks.BUILTIN_TASKS["cola"].primary_metric == "mcc"
    assert tasks.BUILTIN_TASKS["mnli"].num_classes == 3
    assert tasks.available_tasks(glue) == ["mrpc", "rte", "wsc"]  # boolq has no training file


def test_unknown_field_names_the_fields_found(tmp_path):
    _write(tmp_path / "rte.train.jsonl", [{"premise": "a", "hypothesis": "b", "label": 0}])
    with pytest.raises(DataError, match=r"rte.train.jsonl:1.*sentence1, sentence2.*has hypothesis, label, premise"):
        tasks.load_split(tasks.BUILTIN_TASKS["rte"], tmp_path, "train")
    # The same file works once the config names its fields.
    spec = tasks.spec_from_config({"text_fields": "premise,hypothesis"}, "rte")
    assert tasks.load_split(spec, tmp_path, "train").texts == [("a", "b")]


def test_bad_labels_name_the_line(tmp_path):
    _write(tmp_path / "t.train.jsonl", [{"s": "x", "label": 1}, {"s": "y", "label": 2}])
    spec = tasks.spec_from_config({"text_fields": "s"}, "t")
    with pytest.raises(DataError, match=r"t.train.jsonl:2: label 2 is outside \[0, 2\)"):
        tasks.load_split(spec, tmp_path, "train")
    three = tasks.spec_from_config({"text_fields": "s", "num_classes": 3}, "t")
    assert tasks.load_split(three, tmp_path, "train").labels.tolist() == [1, 2]

    _write(tmp_path / "n.train.jsonl", [{"s": "x", "label": "entailment"}, {"s": "y", "label": "neutral"}])
    named = tasks.spec_from_config({"text_fields": "s", "label_names": "not_entailment,entailment"}, "n")
    with pytest.raises(DataError, match=r"n.train.jsonl:2: label 'neutral' is not a class"):
        tasks.load_split(named, tmp_path, "train")
    with pytest.raises(DataError, match="set finetune.label_names"):
        tasks.load_split(tasks.spec_from_config({"text_fields": "s"}, "n"), tmp_path, "train")

    (tmp_path / "j.train.jsonl").write_text('{"s": "x", "label": 0}\n{not json\n')
    with pytest.raises(DataError, match=r"j.train.jsonl:2 is not valid JSON"):
        tasks.load_split(tasks.spec_from_config({"text_fields": "s"}, "j"), tmp_path, "train")
    with pytest.raises(DataError, match=r"j.valid.jsonl does not exist \(files for 'j' there: j.train.jsonl\)"):
        tasks.load_split(tasks.spec_from_config({"text_fields": "s"}, "j"), tmp_path, "valid")


def test_task_description_errors():
    with pytest.raises(ConfigError, match="unknown task 'nli'. Built-in tasks: rte, mrpc"):
        tasks.spec_from_config({"text_fields": ""}, "nli")
    with pytest.raises(ConfigError, match="one or two segments"):
        tasks.spec_from_config({"text_fields": "a,b,c"}, "x")
    with pytest.raises(ConfigError, match="f1 is the binary F1"):
        tasks.spec_from_config({"text_fields": "a", "num_classes": 3, "metrics": "f1"}, "x")
    with pytest.raises(ConfigError, match="unknown metric 'auc'"):
        tasks.spec_from_config({"text_fields": "a", "metrics": "auc"}, "x")
    with pytest.raises(ConfigError, match="label_names has 3 names for num_classes=2"):
        tasks.spec_from_config({"text_fields": "a", "label_names": "x,y,z"}, "x")
    multi = tasks.spec_from_config({"text_fields": "paragraph,question+answer"}, "mine")
    assert multi.texts({"paragraph": "P", "question": "Q?", "answer": "A", "label": 1}) == ("P", "Q? A")


def test_config_presets_and_errors(tmp_path):
    c = finetune.build_config("mrpc,seeds3,smoke,finetune.lr=0.001")
    assert (c.mode, c.finetune.task, c.finetune.seeds, c.finetune.lr) == ("finetune", "mrpc", (0, 1, 2), 0.001)
    assert c.finetune.max_train_examples == 64 and c.finetune.epochs == 2
    finetune.validate_config(c)
    with pytest.raises(ConfigError, match="unknown preset word 'rtee'.*Did you mean 'rte'.*Valid words: boolq"):
        finetune.build_config("rtee")
    with pytest.raises(ConfigError, match="no fine-tuning data: set finetune.data_dir"):
        finetune.resolve_data_dir(c.finetune, {"name": "vanilla"})
    assert finetune.resolve_data_dir(c.finetune, {"finetune": {"data_dir": str(tmp_path)}}) == tmp_path
    with pytest.raises(ConfigError, match="init_from"):
        finetune.run(c, str(tmp_path))
    bad = finetune.build_config("finetune.task=rte;x")
    with pytest.raises(ConfigError, match="unknown task 'rte;x'"):
        finetune.validate_config(bad)
    with pytest.raises(ConfigError, match="unknown fine-tuning setting 'learning_rate'"):
        finetune.evaluate_tasks(tmp_path, "rte", data_dir=tmp_path, learning_rate=1.0)


# ------------------------------------------------------------------------------------------------
# Fine-tuning a tiny encoder.


@pytest.fixture(scope="module")
def tiny(shared_data):
    """A byte-level BPE trained on the RTE slice and a small random encoder."""
    glue = shared_data / "glue_filtered"
    lines = [json.loads(x) for x in (glue / "rte.train.jsonl").read_text().splitlines()[:200]]
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator([r["sentence1"] + " " + r["sentence2"] for r in lines], vocab_size=600,
                            special_tokens=list(SPECIAL_TOKENS), show_progress=False)
    core = Tokenizer.from_str(bpe.to_str())
    core.post_processor = RobertaProcessing(("</s>", 2), ("<s>", 0))
    tok = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                  unk_token="<unk>", mask_token="<mask>")
    cfg = RobertaConfig(vocab_size=len(tok), hidden_size=64, num_layers=1, num_heads=2, intermediate_size=128,
                        max_position_embeddings=128, dropout_rate=0.0, attention_dropout_rate=0.0)
    params = init_params(jax.random.PRNGKey(0), cfg)
    return types.SimpleNamespace(glue=glue, tok=tok, cfg=cfg, params=params)


def test_pair_encoding_uses_roberta_special_tokens(tiny):
    data = tasks.load_split(tasks.BUILTIN_TASKS["rte"], tiny.glue, "valid", max_examples=4)
    enc = tasks.encode(tiny.tok, data, max_len=32)
    assert enc.input_ids.shape == (4, 32) and enc.input_ids.dtype == np.int32
    row, mask = enc.input_ids[0], enc.attention_mask[0].astype(bool)
    assert row[0] == 0 and row[mask][-1] == 2 and np.all(row[~mask] == 1)
    seps = np.flatnonzero(row == 2)
    assert seps[1] == seps[0] + 1  # <s> a </s></s> b </s>
    assert enc.truncated == 4  # RTE pairs are longer than 32 tokens with this small vocabulary


def test_finetuning_beats_the_majority_class_on_its_training_slice(tiny, tmp_path):
    ft = finetune.build_config("rte,smoke").finetune
    ft.update(dict(lr=2e-3, epochs=12, max_seq_len=64, seeds=(0, 1), eval_train=True, weight_decay=0.0,
                   warmup_fraction=0.05))
    spec = tasks.BUILTIN_TASKS["rte"]
    with CompileCounter() as counter:
        result = finetune.finetune_task(tiny.params["encoder"], tiny.cfg, tiny.tok, spec, ft, data_dir=tiny.glue,
                                        log=lambda _: None)
    assert counter.count("finetune_train_step") == 1  # fixed shapes: one compile for all seeds and epochs
    assert result["num_train"] == 64 and result["num_valid"] == 64
    majority = result["majority_baseline"]["train"]["accuracy"]
    assert len(result["per_seed"]) == 2
    for seed in result["per_seed"]:
        final_train = seed["history"][-1]["train"]["accuracy"]
        assert final_train > majority + 0.1, (final_train, majority)
        assert 1 <= seed["best_epoch"] <= seed["epochs_run"] == 12
        assert len(seed["correct"]) == 64
        best = seed["history"][seed["best_epoch"] - 1]["valid"]["accuracy"]
        assert best == seed["metrics"]["accuracy"] == pytest.approx(np.mean(seed["correct"]))
    losses = [h["train_loss"] for h in result["per_seed"][0]["history"]]
    assert losses[-1] < losses[0]
    assert result["mean"]["accuracy"] == pytest.approx(np.mean([s["metrics"]["accuracy"] for s in result["per_seed"]]))


def test_run_writes_results_into_the_pretraining_workdir(tiny, tmp_path, monkeypatch):
    pre = tmp_path / "pretrain"
    pre.mkdir()
    loaded = types.SimpleNamespace(config={"name": "vanilla", "label": "vanilla", "seed": 3}, params=tiny.params,
                                   step=300, model_config=tiny.cfg, tokenizer=tiny.tok, workdir=str(pre))
    calls = []
    monkeypatch.setattr(finetune, "_load", lambda wd, step: calls.append((wd, step)) or loaded)
    c = finetune.build_config("rte,smoke,finetune.epochs=1,finetune.max_train_examples=16,"
                              "finetune.max_valid_examples=16,finetune.patience=1")
    with c.unlocked():
        c.init_from = str(pre)
    # No data folder anywhere: a clear error before the checkpoint is loaded.
    (pre / "config.json").write_text(json.dumps({"name": "vanilla", "finetune": {"data_dir": ""}}))
    with pytest.raises(ConfigError, match="no fine-tuning data: set finetune.data_dir"):
        finetune.run(c, str(pre))
    with pytest.raises(DataError, match=r"qqp.train.jsonl does not exist: task 'qqp' needs"):
        finetune.evaluate_tasks(pre, "rte,qqp", data_dir=tiny.glue)
    assert calls == []
    # The pretraining run's own finetune.data_dir is the default.
    (pre / "config.json").write_text(json.dumps({"name": "vanilla", "finetune": {"data_dir": str(tiny.glue)}}))
    other = tmp_path / "ftrun"
    with CompileCounter() as counter:
        written = finetune.run(c, str(other))
        assert calls == [(str(pre), None)]
        assert written == [pre / "finetune" / "rte.json", other / "finetune" / "rte.json"]
        doc = json.loads((pre / "finetune" / "rte.json").read_text())
        assert doc["task"] == "rte" and doc["checkpoint_step"] == 300 and doc["pretraining_seed"] == 3
        assert doc["primary_metric"] == "accuracy" and len(doc["per_seed"]) == 1
        assert doc["task_spec"]["text_fields"] == [["sentence1"], ["sentence2"]]
        assert doc["data_dir"] == str(tiny.glue) and doc["hyperparameters"]["epochs"] == 1

        out = finetune.evaluate_tasks(pre, ["rte"], smoke=True, epochs=1, max_train_examples=16,
                                      max_valid_examples=16, seeds=[5], patience=1, step=300)
    assert out == pre / "finetune" and calls[-1] == (str(pre), 300)
    assert json.loads((out / "rte.json").read_text())["per_seed"][0]["seed"] == 5
    # The same shapes and schedule a second time: the compiled steps are reused.
    assert counter.count("finetune_train_step") == 1
