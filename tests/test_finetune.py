"""Fine-tuning: the protocols' values, task descriptions and the pipeline's input templates, the
evaluation/early-stopping/selection rule, the optimizer, and a tiny encoder fine-tuned end to end.

Most tests use tiny JSON-lines files written here; the ones that read BabyLM's filtered GLUE files
(`../shared/data/glue_filtered`) say so in their skip reason."""

import json
import types
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tokenizers import ByteLevelBPETokenizer, Tokenizer
from tokenizers.processors import RobertaProcessing
from transformers import PreTrainedTokenizerFast

from climb_jax.config import choices
from climb_jax.constants import SPECIAL_TOKENS
from climb_jax.errors import ConfigError, DataError
from climb_jax.eval import finetune, finetune_config, finetune_model, finetune_selection, tasks
from climb_jax.models.roberta import RobertaConfig, init_params
from climb_jax.train import optim
from climb_jax.train.compile_count import CompileCounter


def _write(path: Path, records) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture(scope="module")
def glue(shared_data):
    path = shared_data / "glue_filtered"
    if not path.is_dir():
        pytest.skip("needs BabyLM's filtered GLUE files (../shared/data/glue_filtered)")
    return path


# ------------------------------------------------------------------------------------------------
# The protocols' values.


def test_babylm2023_is_the_default_protocol_with_the_pipelines_values():
    c = finetune.build_config()
    assert c.finetune.protocol == choices.DEFAULT_FINETUNE_PROTOCOL == "babylm2023"
    assert tuple(finetune_config.PROTOCOLS) == choices.FINETUNE_PROTOCOLS
    s = finetune.settings(c.finetune, "rte")
    # finetune_classification.py as the reference's evaluator ran it.
    assert (s.lr, s.batch_size, s.epochs, s.max_seq_len) == (5e-5, 64, 10, 128)
    assert (s.weight_decay, s.warmup_fraction) == (0.0, 0.0)
    assert (s.eval_every, s.patience, s.threshold) == (200, 10, 0.001)
    assert s.seeds == (12,)
    assert s.select_every == 500  # no --save_steps: the Trainer's default 500
    assert (s.max_grad_norm, s.adam_b1, s.adam_b2, s.adam_eps) == (1.0, 0.9, 0.999, 1e-8)  # Trainer defaults
    assert finetune.settings(c.finetune, "mnli") == s  # every task alike


def test_per_epoch_protocol_keeps_the_earlier_recipe_and_explicit_values_win():
    c = finetune.build_config("per_epoch")
    s = finetune.settings(c.finetune, "rte")
    assert (s.eval_every, s.select_every, s.patience, s.threshold) == (0, 0, 3, 0.0)
    assert (s.warmup_fraction, s.weight_decay, s.seeds, s.epochs) == (0.1, 0.01, (0,), 10)
    assert (finetune.settings(c.finetune, "qqp").epochs, finetune.settings(c.finetune, "qqp").patience) == (3, 1)
    # The protocol switched after the preset words (as --config.finetune.protocol does) moves every unset value.
    c = finetune.build_config("finetune.patience=4,finetune.seeds=[1,2]")
    c.finetune.protocol = "per_epoch"
    s = finetune.settings(c.finetune, "rte")
    assert (s.patience, s.seeds, s.weight_decay, s.eval_every) == (4, (1, 2), 0.01, 0)
    with pytest.raises(ConfigError, match="finetune.protocol='babylm' is not valid. Did you mean 'babylm2023'"):
        c.finetune.protocol = "babylm"
        finetune.settings(c.finetune, "rte")


def test_the_config_file_loads_without_jax():
    import subprocess
    import sys

    code = ("import sys; from climb_jax.config import schema; c = schema.load('configs/finetune.py:rte'); "
            "assert c.finetune.protocol == 'babylm2023' and 'jax' not in sys.modules, sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])


def test_config_presets_and_errors(tmp_path):
    c = finetune.build_config("mrpc,rte,seeds3,smoke,finetune.lr=0.001,finetune.text_fields=[premise,hypothesis]")
    assert (c.mode, c.finetune.task, c.finetune.seeds, c.finetune.lr) == ("finetune", "mrpc,rte", (0, 1, 2), 0.001)
    assert finetune.task_names(c.finetune) == ["mrpc", "rte"]
    assert c.finetune.text_fields == "premise,hypothesis"
    assert tasks.spec_from_config(c.finetune, "rte").segments == ("{premise}", "{hypothesis}")
    assert c.finetune.max_train_examples == 64 and c.finetune.epochs == 2
    finetune.validate_config(c)
    with pytest.raises(ConfigError, match="unknown preset word 'rtee'.*Did you mean 'rte'.*Valid words: babylm2023, boolq.*per_epoch"):
        finetune.build_config("rtee")
    with pytest.raises(ConfigError, match=r"write the list in brackets: finetune.text_fields=\[premise,hypothesis\]"):
        finetune.build_config("finetune.text_fields=premise,hypothesis")
    # Smoke without a data folder: the sample shipped in the package; without smoke, no default.
    assert finetune.resolve_data_dir(c.finetune, {"name": "vanilla"}) == tasks.EMBEDDED_DIR
    with pytest.raises(ConfigError, match="no fine-tuning data: set finetune.data_dir.*finetune.data_dir=embedded"):
        finetune.resolve_data_dir(finetune.build_config("rte").finetune, {"name": "vanilla"})
    assert finetune.resolve_data_dir(finetune.build_config("rte").finetune,
                                     {"finetune": {"data_dir": str(tmp_path)}}) == tmp_path
    with pytest.raises(ConfigError, match="init_from"):
        finetune.run(c, str(tmp_path))
    bad = finetune.build_config("finetune.task=rte;x")
    with pytest.raises(ConfigError, match="unknown task 'rte;x'"):
        finetune.validate_config(bad)
    with pytest.raises(ConfigError, match="finetune.seeds must be integers"):
        finetune.settings(finetune.build_config("finetune.seeds=[a]").finetune, "rte")
    with pytest.raises(ConfigError, match="unknown fine-tuning setting 'learning_rate'"):
        finetune.evaluate_tasks(tmp_path, "rte", data_dir=tmp_path, learning_rate=1.0)


# ------------------------------------------------------------------------------------------------
# Task descriptions and the pipeline's inputs.


WSC = {"text": "Mark told Pete many lies. He should have been skeptical.", "span1_text": "Mark",
       "span2_text": "He", "span1_index": 0, "span2_index": 5, "idx": 0, "label": 0}
MULTIRC = {"paragraph": "Sam ate an apple.", "question": "What did Sam eat?", "answer": "An apple", "idx": 3,
           "label": 1}


def test_babylm2023_inputs_are_the_pipelines_templates():
    specs = tasks.builtin_tasks("babylm2023")
    assert specs["wsc"].texts(WSC) == ('Does "He" refer to "Mark" in this passage?',
                                       "Mark told Pete many lies. He should have been skeptical.")
    assert specs["multirc"].texts(MULTIRC) == ("Question: What did Sam eat? Answer: An apple", "Sam ate an apple.")
    pairs = {"rte": ("sentence1", "sentence2"), "mrpc": ("sentence1", "sentence2"), "boolq": ("question", "passage"),
             "mnli": ("premise", "hypothesis"), "mnli-mm": ("premise", "hypothesis"), "qqp": ("question1", "question2"),
             "qnli": ("question", "sentence"), "cola": ("sentence",), "sst2": ("sentence",)}
    for name, fields in pairs.items():
        record = {f: f.upper() for f in fields}
        assert specs[name].texts(record) == tuple(f.upper() for f in fields), name
    # The per_epoch protocol keeps this project's earlier inputs.
    old = tasks.builtin_tasks("per_epoch")
    assert old["wsc"].texts(WSC) == ("He: Mark told Pete many lies. He should have been skeptical.", "Mark")
    assert old["multirc"].texts(MULTIRC) == ("Sam ate an apple.", "What did Sam eat? An apple")
    assert set(specs) == set(old) == set(choices.TASKS)


def test_metrics_and_selection_by_protocol():
    specs = tasks.builtin_tasks("babylm2023")
    for name, spec in specs.items():
        # Selected by F1 for binary tasks, accuracy otherwise (the pipeline's metric_for_best_model); the
        # headline is accuracy, F1 for MRPC and QQP (BabyLM's tables).
        binary = spec.num_classes == 2
        assert spec.selection_metric == ("f1" if binary else "accuracy"), name
        assert spec.primary_metric == ("f1" if name in ("mrpc", "qqp") else "accuracy"), name
        assert set(spec.metrics) == ({"f1", "accuracy"} if binary else {"accuracy"}), name
    assert specs["mnli"].num_classes == specs["mnli-mm"].num_classes == 3
    old = tasks.builtin_tasks("per_epoch")
    assert (old["mrpc"].primary_metric, old["cola"].primary_metric, old["rte"].primary_metric) == ("f1", "mcc", "accuracy")
    assert all(s.selection_metric == s.primary_metric for s in old.values())
    custom = tasks.spec_from_config({"text_fields": "s", "num_classes": 2}, "mine")
    assert (custom.metrics, custom.selection_metric) == (("accuracy", "f1"), "f1")
    assert tasks.spec_from_config({"text_fields": "s", "num_classes": 4}, "mine").metrics == ("accuracy",)
    assert tasks.spec_from_config({"text_fields": "s", "metrics": "mcc"}, "mine").selection_metric == "mcc"
    per_epoch = tasks.spec_from_config({"text_fields": "s", "protocol": "per_epoch"}, "mine")
    assert (per_epoch.metrics, per_epoch.selection_metric) == (("accuracy",), "accuracy")


def test_mnli_mismatched_is_its_own_task(tmp_path):
    row = lambda p, lab: {"premise": p, "hypothesis": "h", "label": lab}  # noqa: E731
    _write(tmp_path / "mnli.train.jsonl", [row("train", 0), row("train", 2)])
    _write(tmp_path / "mnli.valid.jsonl", [row("matched", 1)])
    _write(tmp_path / "mnli-mm.valid.jsonl", [row("mismatched", 2)])
    mm = tasks.BUILTIN_TASKS["mnli-mm"]
    assert tasks.load_split(mm, tmp_path, "train").texts == [("train", "h"), ("train", "h")]
    assert tasks.load_split(mm, tmp_path, "valid").texts == [("mismatched", "h")]
    assert tasks.load_split(tasks.BUILTIN_TASKS["mnli"], tmp_path, "valid").texts == [("matched", "h")]
    assert tasks.available_tasks(tmp_path) == ["mnli", "mnli-mm"]
    # The pipeline's own file names are found too.
    pipe = tmp_path / "pipeline"
    pipe.mkdir()
    _write(pipe / "mnli.train.json", [row("train", 0)])
    _write(pipe / "mnli.validation_matched.json", [row("matched", 1)])
    _write(pipe / "mnli.validation_mismatched.json", [row("mismatched", 2)])
    assert tasks.load_split(mm, pipe, "valid").texts == [("mismatched", "h")]
    assert tasks.load_split(tasks.BUILTIN_TASKS["mnli"], pipe, "valid").texts == [("matched", "h")]
    assert tasks.available_tasks(pipe) == ["mnli", "mnli-mm"]


def test_builtin_tasks_read_the_shared_files(glue):
    for name, split in (("rte", "train"), ("mrpc", "valid"), ("wsc", "train"), ("boolq", "valid")):
        data = tasks.load_split(tasks.BUILTIN_TASKS[name], glue, split, max_examples=5)
        assert len(data) == 5 and data.labels.dtype == np.int32
        assert set(data.labels.tolist()) <= {0, 1}
        assert all(len(t) == 2 and all(t) for t in data.texts)
    wsc = tasks.load_split(tasks.BUILTIN_TASKS["wsc"], glue, "train", max_examples=1)
    first = json.loads((glue / "wsc.train.jsonl").read_text().splitlines()[0])
    assert wsc.texts[0] == (f'Does "{first["span2_text"]}" refer to "{first["span1_text"]}" in this passage?',
                            first["text"])
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
    joined = tasks.spec_from_config({"text_fields": "a+b", "joiner": ": "}, "mine")
    assert joined.texts({"a": "x", "b": "{y}", "label": 0}) == ("x: {y}",)  # field values are never templates


# ------------------------------------------------------------------------------------------------
# When to evaluate, when to stop, what is reported.


def test_evaluation_due_every_n_steps_or_at_epoch_ends():
    assert [s for s in range(1, 1001) if finetune_selection.evaluation_due(s, 39, 200)] == [200, 400, 600, 800, 1000]
    assert [s for s in range(1, 100) if finetune_selection.evaluation_due(s, 39, 0)] == [39, 78]


def _observe_all(selector, values, steps):
    out = []
    for step, v in zip(steps, values):
        selected, stop = selector.observe(step, v, payload=step)
        out.append((selected, stop, selector.counter))
        if stop:
            break
    return out


def test_selection_follows_the_trainers_rule_by_hand():
    # Every evaluation selectable; threshold 0.001: +0.0005 is no improvement for the patience, yet it
    # becomes the best (the Trainer's best metric takes any strict improvement).
    sel = finetune_selection.Selector(patience=2, threshold=0.001, select_every=0)
    got = _observe_all(sel, [0.50, 0.5005, 0.52, 0.52, 0.5201], [200, 400, 600, 800, 1000])
    assert got == [(True, False, 0), (True, False, 1), (True, False, 0), (False, False, 1), (True, True, 2)]
    assert (sel.best_value, sel.best_step, sel.best) == (0.5201, 1000, 1000)
    # Selection only at multiples of 500 (steps 1000, 2000, ...): until the first such evaluation there
    # is no best, so the patience never runs out; a later better value between saves is not selected.
    sel = finetune_selection.Selector(patience=2, threshold=0.001, select_every=500)
    got = _observe_all(sel, [0.6, 0.7, 0.8, 0.9, 0.5, 0.95, 0.4, 0.4], [200, 400, 600, 800, 1000, 1200, 1400, 1600])
    assert [g[0] for g in got] == [False, False, False, False, True, False, False, False]
    assert got[-1] == (False, True, 2) and sel.best_step == 1000  # 0.95 at 1200 reset the count, never selected
    none = finetune_selection.Selector(patience=1, threshold=0.001, select_every=500)
    assert _observe_all(none, [0.3, 0.2, 0.1], [200, 400, 600])[-1] == (False, False, 0) and none.best is None


def test_per_epoch_rule_equals_the_earlier_loop():
    rng = np.random.default_rng(0)
    for _ in range(200):
        values = np.round(rng.uniform(0.4, 0.6, size=10), 2).tolist()
        patience = int(rng.integers(0, 4))
        best, since, picked, stopped = None, 0, None, len(values)
        for i, v in enumerate(values):  # the per-epoch loop as it was written before the protocols
            if best is None or v > best:
                best, since, picked = v, 0, i
            else:
                since += 1
                if patience and since >= patience:
                    stopped = i + 1
                    break
        sel = finetune_selection.Selector(patience=patience, threshold=0.0, select_every=0)
        got = _observe_all(sel, values, range(1, 11))
        assert (len(got), sel.best) == (stopped, picked + 1)


# ------------------------------------------------------------------------------------------------
# The optimizer.


def test_finetune_optimizer_schedule_and_clipping():
    total = 100
    s = finetune.settings(finetune.build_config().finetune, "rte")
    tx = finetune_model.Optimizer.build(s.optimizer_key(), total)
    # No warmup: the first step takes the full 5e-5, then linear decay to zero at the end (HF's linear schedule).
    np.testing.assert_allclose([float(tx.lr(n)) for n in range(total + 1)],
                               5e-5 * (total - np.arange(total + 1)) / total, rtol=1e-6)
    params = {"w": jnp.zeros((3,))}
    g = {"w": jnp.array([30.0, 0.0, 40.0])}  # norm 50: clipped to norm 1 by 1 / (50 + 1e-6)
    new, _, lr = tx.update(g, tx.init(params), params, jnp.int32(0))
    # transformers' AdamW, first step: sqrt(1 - b2) / (1 - b1) * m / (sqrt(v) + eps) with m, v of the clipped g.
    c = np.array([30.0, 0.0, 40.0]) / (50 + 1e-6)
    m, v = 0.1 * c, 0.001 * c * c
    want = -5e-5 * np.sqrt(0.001) / 0.1 * m / (np.sqrt(v) + 1e-8)
    np.testing.assert_allclose(new["w"], want, rtol=1e-5)
    assert float(lr) == pytest.approx(5e-5)
    # torch's clipping rule over the whole tree; no change below the threshold.
    tree = {"a": jnp.array([3.0, 0.0]), "b": jnp.array([[4.0]])}
    clipped, norm = optim.clip_like_torch(tree, 1.0)
    assert float(norm) == pytest.approx(5.0)
    np.testing.assert_allclose(clipped["a"], [3.0 / (5.0 + 1e-6), 0.0], rtol=1e-6)
    np.testing.assert_allclose(clipped["b"], [[4.0 / (5.0 + 1e-6)]], rtol=1e-6)
    assert float(optim.clip_like_torch({"a": jnp.array([0.3])}, 1.0)[0]["a"][0]) == pytest.approx(0.3)
    # per_epoch: warmup over the first 10 % from zero.
    warm = finetune_model.Optimizer.build(finetune.settings(finetune.build_config("per_epoch").finetune,
                                                            "rte").optimizer_key(), total).lr
    assert [float(warm(n)) for n in (0, 5, 10)] == pytest.approx([0.0, 2.5e-5, 5e-5])
    assert float(warm(55)) == pytest.approx(2.5e-5)


# ------------------------------------------------------------------------------------------------
# Fine-tuning a tiny encoder.

_WORDS = {1: ["bright", "happy", "warm", "kind", "sunny"], 0: ["dark", "sad", "cold", "cruel", "rainy"]}


def _toy_task(folder: Path, n_train: int = 48, n_valid: int = 16) -> Path:
    """A sentence task a one-layer model learns in a few steps: the adjective's side is the label."""
    rng = np.random.default_rng(1)

    def rows(n):
        out = []
        for i in range(n):
            label = i % 2
            adj = _WORDS[label][int(rng.integers(5))]
            out.append({"sentence": f"the day was {adj} and the {['dog', 'cat'][int(rng.integers(2))]} slept",
                        "label": label})
        return out

    folder.mkdir(parents=True, exist_ok=True)
    _write(folder / "toy.train.jsonl", rows(n_train))
    _write(folder / "toy.valid.jsonl", rows(n_valid))
    return folder


@pytest.fixture(scope="module")
def tiny():
    """A byte-level BPE trained on a few sentences and a small random encoder (no data files needed)."""
    text = [f"the day was {w} and the {a} slept" for ws in _WORDS.values() for w in ws for a in ("dog", "cat")]
    text += ["Does it refer to this passage? Question: Answer: a sentence with some words in it"] * 3
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(text, vocab_size=400, special_tokens=list(SPECIAL_TOKENS), show_progress=False)
    core = Tokenizer.from_str(bpe.to_str())
    core.post_processor = RobertaProcessing(("</s>", 2), ("<s>", 0))
    tok = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                  unk_token="<unk>", mask_token="<mask>")
    cfg = RobertaConfig(vocab_size=len(tok), hidden_size=64, num_layers=1, num_heads=2, intermediate_size=128,
                        max_position_embeddings=128, dropout_rate=0.0, attention_dropout_rate=0.0)
    params = init_params(jax.random.PRNGKey(0), cfg)
    return types.SimpleNamespace(tok=tok, cfg=cfg, params=params)


def test_pair_encoding_uses_roberta_special_tokens(tiny, tmp_path):
    _write(tmp_path / "rte.valid.jsonl", [{"sentence1": "the day was warm " * 8, "sentence2": "the cat slept " * 8,
                                           "label": 0}] * 4)
    data = tasks.load_split(tasks.BUILTIN_TASKS["rte"], tmp_path, "valid")
    enc = tasks.encode(tiny.tok, data, max_len=32)
    assert enc.input_ids.shape == (4, 32) and enc.input_ids.dtype == np.int32
    row, mask = enc.input_ids[0], enc.attention_mask[0].astype(bool)
    assert row[0] == 0 and row[mask][-1] == 2 and np.all(row[~mask] == 1)
    seps = np.flatnonzero(row == 2)
    assert seps[1] == seps[0] + 1  # <s> a </s></s> b </s>
    assert enc.truncated == 4


def _toy_ft(**kw):
    c = finetune.build_config(kw.pop("protocol", "babylm2023"))
    c.finetune.update(dict(task="toy", text_fields="sentence", num_classes=2, batch_size=8, eval_batch_size=8,
                           max_seq_len=32, lr=3e-3, **kw))
    return c.finetune


def test_babylm2023_evaluates_every_n_steps_and_reports_the_selected_step(tiny, tmp_path):
    folder = _toy_task(tmp_path / "toy")
    spec = tasks.spec_from_config(_toy_ft(), "toy")
    assert (spec.metrics, spec.selection_metric) == (("accuracy", "f1"), "f1")
    # 48 examples / 8 = 6 steps per epoch; evaluations every 4 steps, selectable at multiples of 8.
    ft = _toy_ft(epochs=4, eval_every=4, select_every=8, patience=50, seeds=(12, 13))
    with CompileCounter() as counter:
        result = finetune.finetune_task(tiny.params["encoder"], tiny.cfg, tiny.tok, spec, ft, data_dir=folder,
                                        log=lambda _: None)
    assert counter.count("finetune_train_step") == 1  # fixed shapes: one compile for every seed and step
    assert result["protocol"] == "babylm2023"
    assert (result["primary_metric"], result["selection_metric"]) == ("accuracy", "f1")
    for seed in result["per_seed"]:
        assert [h["step"] for h in seed["history"]] == [4, 8, 12, 16, 20, 24]
        assert [h["epoch"] for h in seed["history"]] == [1, 2, 2, 3, 4, 4]
        assert seed["selected"] == "best" and seed["best_step"] % 8 == 0 and seed["steps_run"] == 24
        at_best = {h["step"]: h["valid"] for h in seed["history"]}[seed["best_step"]]
        assert seed["metrics"] == at_best and seed["metrics"]["accuracy"] == pytest.approx(np.mean(seed["correct"]))
        selectable = [h["valid"]["f1"] for h in seed["history"] if h["step"] % 8 == 0]
        assert seed["metrics"]["f1"] == max(selectable)
        assert seed["history"][0]["train_loss"] > seed["history"][-1]["train_loss"]
    assert result["hyperparameters"]["seeds"] == [12, 13] and result["hyperparameters"]["threshold"] == 0.001

    # Patience: stops after `patience` evaluations without an improvement above the threshold (here
    # none can exceed it), while the best is still any strict improvement.
    stopped = finetune.finetune_task(tiny.params["encoder"], tiny.cfg, tiny.tok, spec,
                                     _toy_ft(epochs=20, eval_every=2, select_every=0, patience=2, threshold=1.0,
                                             seeds=(12,)), data_dir=folder, log=lambda _: None)["per_seed"][0]
    assert stopped["stopped_early"] and stopped["steps_run"] == 6 and len(stopped["history"]) == 3
    f1s = [h["valid"]["f1"] for h in stopped["history"]]
    assert stopped["best_step"] == 2 * (int(np.argmax(f1s)) + 1)

    # No evaluation at a selectable step (a run shorter than select_every): the last step is reported.
    last = finetune.finetune_task(tiny.params["encoder"], tiny.cfg, tiny.tok, spec,
                                  _toy_ft(epochs=1, seeds=(12,)), data_dir=folder, log=lambda _: None)["per_seed"][0]
    assert last["selected"] == "last" and last["history"] == [] and last["best_step"] == last["steps_run"] == 6


def test_per_epoch_finetuning_beats_the_majority_class_on_its_training_slice(tiny, tmp_path):
    folder = _toy_task(tmp_path / "toy", n_train=64, n_valid=64)
    ft = _toy_ft(protocol="per_epoch")
    ft.update(dict(lr=1e-2, epochs=8, seeds=(0, 1), eval_train=True, weight_decay=0.0, warmup_fraction=0.05,
                   batch_size=16, eval_batch_size=32, metrics="accuracy", patience=0))
    spec = tasks.spec_from_config(ft, "toy")
    with CompileCounter() as counter:
        result = finetune.finetune_task(tiny.params["encoder"], tiny.cfg, tiny.tok, spec, ft, data_dir=folder,
                                        log=lambda _: None)
    assert counter.count("finetune_train_step") == 1
    assert result["num_train"] == 64 and result["num_valid"] == 64
    majority = result["majority_baseline"]["train"]["accuracy"]
    assert len(result["per_seed"]) == 2
    for seed in result["per_seed"]:
        assert [h["step"] for h in seed["history"]] == [4 * e for e in range(1, seed["epochs_run"] + 1)]
        assert seed["history"][-1]["train"]["accuracy"] > majority + 0.1
        assert 1 <= seed["best_epoch"] <= seed["epochs_run"] == 8 and not seed["stopped_early"]
        best = seed["history"][seed["best_epoch"] - 1]["valid"]["accuracy"]
        assert best == seed["metrics"]["accuracy"] == pytest.approx(np.mean(seed["correct"]))
        assert best == max(h["valid"]["accuracy"] for h in seed["history"])
    assert result["mean"]["accuracy"] == pytest.approx(np.mean([s["metrics"]["accuracy"] for s in result["per_seed"]]))


def test_run_writes_results_into_the_pretraining_workdir(tiny, tmp_path, monkeypatch):
    folder = _toy_task(tmp_path / "data")
    pre = tmp_path / "pretrain"
    pre.mkdir()
    loaded = types.SimpleNamespace(config={"name": "vanilla", "label": "vanilla", "seed": 3}, params=tiny.params,
                                   step=300, model_config=tiny.cfg, tokenizer=tiny.tok, workdir=str(pre))
    calls = []
    monkeypatch.setattr(finetune, "_load", lambda wd, step: calls.append((wd, step)) or loaded)
    c = finetune.build_config("smoke,finetune.task=toy,finetune.text_fields=sentence,finetune.epochs=1,"
                              "finetune.max_train_examples=16,finetune.max_valid_examples=16")
    with c.unlocked():
        c.init_from = str(pre)
    c.finetune.data_dir = ""  # not the smoke preset's sample
    # No data folder anywhere: a clear error before the checkpoint is loaded.
    (pre / "config.json").write_text(json.dumps({"name": "vanilla", "finetune": {"data_dir": ""}}))
    with pytest.raises(ConfigError, match="no fine-tuning data: set finetune.data_dir .e.g. --config.finetune.data_dir="):
        finetune.run(c, str(pre))
    with pytest.raises(ConfigError, match="no fine-tuning data: set finetune.data_dir .e.g. --tasks_dir=<folder"):
        finetune.evaluate_tasks(pre, "rte", data_dir_flag="--tasks_dir")
    with pytest.raises(DataError, match=r"qqp.train.jsonl does not exist: task 'qqp' needs qqp.train.jsonl"):
        finetune.evaluate_tasks(pre, "toy,qqp", data_dir=folder, text_fields="sentence")
    assert calls == []
    # The pretraining run's own finetune.data_dir is the default.
    (pre / "config.json").write_text(json.dumps({"name": "vanilla", "finetune": {"data_dir": str(folder)}}))
    other = tmp_path / "ftrun"
    with CompileCounter() as counter:
        written = finetune.run(c, str(other))
        assert calls == [(str(pre), None)]
        assert written == [pre / "finetune" / "toy.json", other / "finetune" / "toy.json"]
        doc = json.loads((pre / "finetune" / "toy.json").read_text())
        assert doc["task"] == "toy" and doc["checkpoint_step"] == 300 and doc["pretraining_seed"] == 3
        assert doc["primary_metric"] == "accuracy" and len(doc["per_seed"]) == 1 and doc["per_seed"][0]["seed"] == 12
        assert doc["task_spec"]["segments"] == ["{sentence}"] and doc["protocol"] == "babylm2023"
        assert doc["data_dir"] == str(folder) and doc["hyperparameters"]["epochs"] == 1
        assert doc["num_train"] == 16 and doc["num_valid"] == 16

        # The limits climb_jax.evaluate passes: examples, epochs and seeds.
        out = finetune.evaluate_tasks(pre, ["toy"], smoke=True, data_dir=folder, text_fields="sentence", epochs=1,
                                      max_train_examples=16, max_valid_examples=8, seeds=[5], step=300)
    assert out == pre / "finetune" and calls[-1] == (str(pre), 300)
    doc = json.loads((out / "toy.json").read_text())
    assert doc["per_seed"][0]["seed"] == 5 and doc["num_valid"] == 8 and doc["per_seed"][0]["epochs_run"] == 1
    # The same shapes and schedule a second time: the compiled steps are reused.
    assert counter.count("finetune_train_step") == 1


def test_smoke_finetunes_on_the_sample_shipped_in_the_package(tiny, tmp_path, monkeypatch):
    c = finetune.build_config("smoke")
    assert (c.finetune.data_dir, c.finetune.task) == (choices.EMBEDDED_FINETUNE_DATA, "wsc")
    assert finetune.build_config("rte,smoke").finetune.task == "rte"  # a task word wins
    assert finetune.build_config("smoke,finetune.data_dir=/x").finetune.data_dir == "/x"
    pre = tmp_path / "pretrain"
    pre.mkdir()
    (pre / "config.json").write_text(json.dumps({"name": "vanilla", "finetune": {"data_dir": ""}}))
    loaded = types.SimpleNamespace(config={"name": "vanilla", "seed": 1}, params=tiny.params, step=300,
                                   model_config=tiny.cfg, tokenizer=tiny.tok, workdir=str(pre))
    monkeypatch.setattr(finetune, "_load", lambda wd, step: loaded)
    with c.unlocked():
        c.init_from = str(pre)
    assert finetune.run(c, str(pre)) == [pre / "finetune" / "wsc.json"]
    doc = json.loads((pre / "finetune" / "wsc.json").read_text())
    assert doc["data_dir"] == str(tasks.EMBEDDED_DIR) and (doc["num_train"], doc["num_valid"]) == (48, 32)
    assert doc["files"] == {"train": str(tasks.EMBEDDED_DIR / "wsc.train.jsonl"),
                            "valid": str(tasks.EMBEDDED_DIR / "wsc.valid.jsonl")}
    assert doc["per_seed"][0]["epochs_run"] == 2 and len(doc["per_seed"][0]["correct"]) == 32
    # Another task on the sample: what it holds and what to do.
    rte = finetune.build_config("rte,smoke")
    with rte.unlocked():
        rte.init_from = str(pre)
    with pytest.raises(DataError, match=r"sample shipped in the package \(finetune.data_dir=embedded\) holds only "
                                        r"wsc; for task 'rte' set finetune.data_dir to a folder with rte.train.jsonl"):
        finetune.run(rte, str(pre))


def test_the_shipped_sample_is_the_first_lines_of_babylms_filtered_wsc(glue):
    for split, n in (("train", 48), ("valid", 32)):
        with open(glue / f"wsc.{split}.jsonl", encoding="utf-8") as f:
            head = [next(f) for _ in range(n)]
        assert (tasks.EMBEDDED_DIR / f"wsc.{split}.jsonl").read_text(encoding="utf-8") == "".join(head)
