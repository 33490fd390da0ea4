"""Config files, the preset grammar, overrides, the list of choices, and `validate` (errors and the
parsed objects)."""

import dataclasses
import subprocess
import sys

import pytest

from climb_jax.config import choices

from climb_jax.config import schema
from climb_jax.config.schema import PresetArg, Setting, parse_arg
from climb_jax.errors import ConfigError
from tests.conftest import REPO


def load(name: str, arg: str | None = None):
    return schema.load(f"configs/{name}.py", arg)


def test_vanilla_is_the_reference_baseline():
    c = load("vanilla")
    assert (c.model.num_layers, c.model.hidden_size, c.model.num_heads, c.model.intermediate_size) == (8, 256, 8, 2048)
    assert (c.trainer.lr, c.trainer.warmup_steps, c.trainer.total_steps, c.trainer.batch_size) == (1e-3, 100_000, 400_000, 128)
    assert c.data.seq_len == 128 and c.data.vocab_size == 8192
    assert c.seed == 42  # the reference's
    schema.validate(c)


def test_smoke_and_sizes_and_key_values():
    c = load("vanilla", "large,smoke,trainer.lr=3e-4,seed=7,model.dtype=bfloat16")
    assert c.model.num_layers == 2 and c.trainer.total_steps == 300  # smoke applies last
    assert c.trainer.lr == 3e-4 and c.seed == 7 and c.model.dtype == "bfloat16"
    assert c.trainer.batch_size % 8 == 0
    c = load("vanilla", "medium")
    assert c.model.hidden_size == 500 and c.model.num_heads == 10


@pytest.mark.parametrize(
    "arg, message",
    [
        ("smok", "unknown preset word 'smok'. Did you mean 'smoke'"),
        ("trainer.lrr=1", "unknown config key 'trainer.lrr'.*Did you mean 'lr'"),
        ("trainer.lr=fast", "'trainer.lr' takes a float, not 'fast'"),
        ("trainer.total_steps=1.5", "takes a int"),
        ("trainer=3", "is a group"),
    ],
)
def test_arg_errors_name_the_choices(arg, message):
    with pytest.raises(ConfigError, match=message):
        load("vanilla", arg)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(model=dict(hidden_size=100, num_heads=8)), "not divisible by model.num_heads=8"),
        (dict(trainer=dict(warmup_steps=10, total_steps=5)), "warmup_steps=10 must lie in"),
        (dict(eval=dict(method="bleu")), "eval.method='bleu' is not valid"),
        (dict(vocab_curriculum=dict(kind="token_idz")), "Did you mean 'token_ids'"),
        (dict(mlm_unit=dict(random_probability=0.6, unmask_probability=0.6)),
         "random_probability \\+ unmask_probability must be at most 1"),
    ],
)
def test_validate_errors(overrides, message):
    c = load("vanilla", "smoke")
    for section, values in overrides.items():
        node = c.objective_curriculum.units.mlm if section == "mlm_unit" else c[section]
        for k, v in values.items():
            node[k] = v
    with pytest.raises(ConfigError, match=message):
        schema.validate(c)


def test_objective_presets_all_validate():
    from climb_jax.curriculum import objectives

    mod_presets = ["base_mlm", "pos_nv_mlm", "pos_all_mlm", "multitask_pos_all_mlm", "multitask_pos_all_mlm_0",
                   "multitask_pos_nv_all_mlm", "multitask_pos_nv_all_mlm_0", "multitask_pos_nv_mlm_0"]
    for p in mod_presets:
        c = load("objective_cl", p + ",smoke")
        units = objectives.validate_units(c.objective_curriculum.units)
        assert sum(u.task == "mlm" for u in units) == 1
    units = {u.name: u for u in objectives.validate_units(load("objective_cl", "multitask_pos_nv_all_mlm").objective_curriculum.units)}
    assert (units["pos_nv"].end, units["pos_all"].start, units["mlm"].start) == (0.0625, 0.0625, 0.125)
    assert units["pos_nv"].tags == ("NOUN", "VERB")


def test_cli_reports_config_errors_without_traceback(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "climb_jax.main", "--config=configs/vanilla.py:smoke,trainer.lrr=1",
         f"--workdir={tmp_path}"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert "unknown config key 'trainer.lrr'" in out.stderr
    assert "Traceback" not in out.stderr


# -- the preset grammar ------------------------------------------------------------------------


def test_grammar_items_in_order_with_lists():
    parsed = parse_arg(" rte, finetune.text_fields=[premise, hypothesis],seeds3,finetune.lr=1e-4,x.y=[] ")
    assert parsed.items == ("rte", Setting("finetune.text_fields", ("premise", "hypothesis")), "seeds3",
                            Setting("finetune.lr", "1e-4"), Setting("x.y", ()))
    assert parsed.words == ("rte", "seeds3") and len(parsed.settings) == 3
    assert parse_arg(None) == parse_arg("") == parse_arg(" , ,") == PresetArg(())
    # A value may itself contain '=' and ':' (only the first '=' splits).
    assert parse_arg("a.b=k:1,c=d=e").items == (Setting("a.b", "k:1"), Setting("c", "d=e"))
    for text in ("smoke,trainer.lr=3e-4", "rte,finetune.text_fields=[premise,hypothesis],seeds3", "a=[]"):
        assert schema.format_arg(parse_arg(text)) == text


@pytest.mark.parametrize("arg, message", [
    ("a=[x,y", r"'\[' without its '\]'"),
    ("a=x]", r"'\]' without its '\['"),
    ("a=[[x]]", "lists do not nest"),
    ("a=[x]y", "the whole value in brackets"),
    ("[x,y]", "brackets belong to a value"),
    ("=3", "no key before '='"),
])
def test_grammar_errors(arg, message):
    with pytest.raises(ConfigError, match=message):
        parse_arg(arg)


def test_lists_set_tuple_and_comma_separated_string_fields():
    c = load("finetune", "rte,finetune.text_fields=[premise,hypothesis],finetune.seeds=[3,4],seeds3")
    assert c.finetune.text_fields == "premise,hypothesis"  # a comma-separated string field
    assert c.finetune.seeds == (3, 4)  # settings apply after the preset words (seeds3)
    assert load("finetune", "finetune.seeds=5").finetune.seeds == (5,)
    assert load("finetune", "finetune.seeds=[1,2]").finetune.seeds == (1, 2)  # ints, from an empty default
    assert load("finetune", "seeds3,finetune.seeds=[7]").finetune.seeds == (7,)  # the type of the elements
    c = load("objective_cl", "pos_nv_mlm,objective_curriculum.units.pos_nv.tags=[NOUN,VERB,ADJ],smoke")
    assert c.objective_curriculum.units.pos_nv.tags == "NOUN,VERB,ADJ"
    assert schema.validate(c).units[1].tags == ("NOUN", "VERB", "ADJ")
    with pytest.raises(ConfigError, match=r"'trainer.lr' takes a float, not a list \[1,2\]"):
        load("vanilla", "trainer.lr=[1,2]")
    with pytest.raises(ConfigError, match="'seed' takes a int, not a list"):
        schema.set_path(schema.base_config(), "seed", ("1",))
    c = load("vanilla", "data.cache_dir=[a,b]")  # a placeholder string field
    assert c.data.cache_dir == "a,b"


def test_a_list_without_brackets_is_refused_with_the_bracketed_form():
    with pytest.raises(ConfigError) as e:
        load("finetune", "rte,finetune.text_fields=premise,hypothesis")
    assert "unknown preset word 'hypothesis' for configs/finetune.py" in str(e.value)
    assert str(e.value).endswith("write the list in brackets: finetune.text_fields=[premise,hypothesis].")
    with pytest.raises(ConfigError, match=r"tags=\[NOUN,VERB,ADJ\]\.$"):
        load("objective_cl", "pos_nv_mlm,objective_curriculum.units.pos_nv.tags=NOUN,VERB,ADJ")
    # No list hint for a field that cannot hold a list, nor for a near miss of a preset word.
    for arg in ("trainer.lr=1e-3,blah", "trainer.lr=1e-3,smok", "data.corpus=x,smok"):
        with pytest.raises(ConfigError) as e:
            load("vanilla", arg)
        assert "brackets" not in str(e.value)


def test_load_and_labels():
    a = schema.load("configs/data_cl.py:ngram,log,smoke")
    b = schema.load("configs/data_cl.py", "ngram,log,smoke")
    assert a.to_dict() == b.to_dict() == schema.load_module("configs/data_cl.py").get_config("ngram,log,smoke").to_dict()
    with pytest.raises(ConfigError, match="give the preset words once"):
        schema.load("configs/data_cl.py:ngram", "log")
    with pytest.raises(ConfigError, match=r"'configs/vanila.py' does not exist. Did you mean 'configs/vanilla.py'\?"):
        schema.load("configs/vanila.py")
    assert schema.default_label("configs/vocab_cl.py:pos_tags,log,smoke") == "vocab_cl:pos_tags-log"
    assert schema.default_label("configs/finetune.py:rte,finetune.text_fields=[a,b],seeds3") == "finetune:rte-seeds3"
    assert schema.default_label("/x/configs/vanilla.py") == "vanilla"
    assert [p.name for p in schema.config_files()] == sorted(p.name for p in (REPO / "configs").glob("*.py"))


# -- the list of choices -----------------------------------------------------------------------


def test_choices_import_no_jax():
    code = "import sys, climb_jax.config.choices; print(sorted(m for m in sys.modules if m.split('.')[0] in ('jax', 'numpy', 'flax', 'ml_collections')))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stderr


def test_every_choice_field_exists_and_defaults_to_a_valid_choice():
    c = schema.base_config()
    for key, valid in choices.FIELD_CHOICES.items():
        node = c
        for part in key.split("."):
            node = node[part]
        assert node in valid, key
        assert len(set(valid)) == len(valid), key
    assert schema.MODEL_SIZES is choices.MODEL_SIZES
    for size, shape in choices.MODEL_SIZES.items():
        assert load("vanilla", size).model.to_dict() | shape == load("vanilla", size).model.to_dict()


# -- validate -> Parsed ------------------------------------------------------------------------


def test_validate_returns_the_parsed_objects():
    from climb_jax.curriculum import objectives
    from climb_jax.curriculum.pacing import PacingParams
    from climb_jax.models.roberta import RobertaConfig

    c = load("vocab_cl", "pos_tags,log,smoke")
    parsed = schema.validate(c)
    assert parsed.vocab_pacing == PacingParams("log", 0.0625, 0.875, 0.1, 1.0)
    assert parsed.data_pacing is None  # no data curriculum
    assert parsed.model == RobertaConfig.from_config(c.model, c.data.vocab_size)
    assert parsed.units == objectives.validate_units(c.objective_curriculum.units)
    assert parsed.total_steps == 300
    c = load("data_cl", "self_perplexity,root")
    parsed = schema.validate(c)
    assert parsed.vocab_pacing is None and parsed.data_pacing.name == "root"
    assert [u.name for u in schema.validate(load("objective_cl", "pos_nv_mlm")).units] == ["mlm", "pos_nv"]


def test_run_setup_consumes_parsed():
    from climb_jax.train.setup import RunSetup

    c = load("vocab_cl", "token_ids,log,smoke")
    parsed = schema.validate(c)
    setup = RunSetup.from_config(c, vocab_size=500, parsed=parsed)
    assert setup.model == dataclasses.replace(parsed.model, vocab_size=500)
    assert setup.units is parsed.units


# -- scale against the embedded sample and the host ----------------------------------------------


def test_paper_size_on_the_embedded_sample_is_refused():
    c = load("data_cl")
    schema.validate(c)  # a valid config ...
    with pytest.raises(ConfigError) as e:  # ... that cannot be run on the sample
        schema.validate(c, for_run=True)
    message = str(e.value)
    assert "data.corpus=embedded" in message and "--config.data.corpus=" in message
    assert "--config=configs/data_cl.py:smoke" in message and "\n" not in message
    rows = schema.embedded_rows(c.data)
    assert 3_600 <= rows < 6_000  # the sample gave 3604 rows of 128 tokens at vocab_size 8192
    # The rule: more than EMBEDDED_MAX_PASSES passes over the sample.
    limit = schema.EMBEDDED_MAX_PASSES * rows // c.trainer.batch_size
    c.trainer.update(total_steps=limit, warmup_steps=0)
    schema.validate(c, for_run=True)
    c.trainer.total_steps = limit + 1
    with pytest.raises(ConfigError, match="pass over it"):
        schema.validate(c, for_run=True)
    c.data.corpus = "/some/babylm/folder"  # the same run on a real corpus is fine
    schema.validate(c, for_run=True)
    for name in ("vanilla", "vocab_cl", "data_cl", "objective_cl"):
        schema.validate(load(name, "smoke"), for_run=True)


def test_projected_cpu_time():
    c = load("vanilla")
    # The benchmarks' model FLOPs per token of `small` (benchmarks/README.md, train step).
    assert schema.flops_per_token(c) == 79_036_416
    tokens = 400_000 * 128 * 128
    assert schema.projected_cpu_seconds(c, 2) == pytest.approx(
        tokens * 79_036_416 / (2 * schema.CPU_MODEL_FLOPS_PER_CORE))
    assert schema.projected_cpu_seconds(load("vanilla", "smoke"), 2) < 600


def test_missing_field_points_at_the_nearest_field_and_lists_the_section():
    from climb_jax.config import grammar

    c = load("vanilla", "smoke")
    assert grammar.missing_field(c, "vocab_curriculum.pacing.name") is None
    pacing = ", ".join(sorted(c.vocab_curriculum.pacing.keys()))
    assert grammar.missing_field(c, "vocab_curriculum.pacing.nme") == (
        f"there is no field 'nme'. Did you mean 'name'? Fields of the section vocab_curriculum.pacing: {pacing}.")
    assert grammar.missing_field(c, "trainer.lr.x") == "trainer.lr is a float value, not a section with a field 'x'."
    assert grammar.missing_field(c, "zzz").startswith("there is no field 'zzz'. Fields of the config (top level): ")
    lr = r"unknown config key 'lr': there is no field 'lr'\. Did you mean 'finetune\.lr' or 'trainer\.lr' or "
    with pytest.raises(ConfigError, match=lr + r"'objective_curriculum\.units\.mlm\.lr'\? "):
        schema.set_path(c, "lr", "1e-3")  # the same help for a preset argument's key=value item
