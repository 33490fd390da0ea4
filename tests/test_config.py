"""Config files, preset words, overrides and validation errors."""

import importlib.util
import subprocess
import sys

import pytest

from climb_jax import config_lib
from climb_jax.errors import ConfigError
from tests.conftest import REPO


def load(name: str, arg: str | None = None):
    spec = importlib.util.spec_from_file_location(f"cfg_{name}", REPO / "configs" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config(arg)


def test_vanilla_is_the_seed_baseline():
    c = load("vanilla")
    assert (c.model.num_layers, c.model.hidden_size, c.model.num_heads, c.model.intermediate_size) == (8, 256, 8, 2048)
    assert (c.trainer.lr, c.trainer.warmup_steps, c.trainer.total_steps, c.trainer.batch_size) == (1e-3, 100_000, 400_000, 128)
    assert c.data.seq_len == 128 and c.data.vocab_size == 8192
    config_lib.validate(c)


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
        (dict(trainer=dict(random_token_probability=0.6, unmask_probability=0.6)), "sum to at most 1"),
    ],
)
def test_validate_errors(overrides, message):
    c = load("vanilla", "smoke")
    for section, values in overrides.items():
        for k, v in values.items():
            c[section][k] = v
    with pytest.raises(ConfigError, match=message):
        config_lib.validate(c)


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
