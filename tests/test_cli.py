"""The command line as a user meets it (`python -m climb_jax.main` in a subprocess): a misspelt config
file, --help, a paper-size config on the embedded sample, list-carrying preset items; and the warning
for a long run on a CPU-only host."""

import os
import subprocess
import sys


from climb_jax.config import schema
from tests.conftest import REPO

CONFIG_FILES = sorted(f"configs/{p.name}" for p in (REPO / "configs").glob("*.py"))


def cli(*args, cwd=REPO, timeout=120):
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "climb_jax.main", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def one_error_line(proc) -> str:
    """The run failed with exit 2 and printed exactly one non-empty line, `error: ...`, and no traceback."""
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def test_misspelt_config_file_is_one_error_line_listing_the_files(tmp_path):
    # From another directory too: the file is looked up in the working directory, then the project.
    proc = cli("--config=configs/vanila.py:smoke", f"--workdir={tmp_path / 'run'}", cwd=tmp_path)
    line = one_error_line(proc)
    assert "config file 'configs/vanila.py' does not exist. Did you mean 'configs/vanilla.py'?" in line
    assert line.endswith(f"Config files: {', '.join(CONFIG_FILES)}.")
    assert not (tmp_path / "run").exists()


def test_config_file_found_from_another_directory(tmp_path):
    # Parsed and validated (the next thing missing is --workdir): the file was found.
    line = one_error_line(cli("--config=configs/vanilla.py:smoke", cwd=tmp_path))
    assert "--workdir is required" in line


def test_help_exits_0_with_every_config_files_presets_and_the_main_fields():
    proc = cli("--help")
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    out = proc.stdout
    for name in CONFIG_FILES:
        assert f"  {name}\n" in out
    # Each file's docstring: its preset words.
    for word in ("pos_tags_and_token_ids", "random_perplexity", "multitask_pos_nv_all_mlm_0", "seeds3", "bf16"):
        assert word in out, word
    for field in ("seed = 42", "data.corpus = 'embedded'", "trainer.total_steps = 400000", "--workdir", "key=[a,b]"):
        assert field in out, field
    assert cli("-h").stdout == out


def test_paper_size_config_on_the_embedded_sample_refuses(tmp_path):
    proc = cli("--config=configs/data_cl.py", f"--workdir={tmp_path / 'run'}")
    line = one_error_line(proc)
    assert line.startswith("error: data.corpus=embedded is the small sample")
    assert "--config.data.corpus=" in line and "--config=configs/data_cl.py:smoke" in line
    assert not (tmp_path / "run").exists()


def test_list_carrying_preset_item(tmp_path):
    good = "--config=configs/objective_cl.py:pos_nv_mlm,objective_curriculum.units.pos_nv.tags=[NOUN,VERB,ADJ],smoke"
    assert "--workdir is required" in one_error_line(cli(good))  # parsed and validated
    bad = good.replace("[NOUN,VERB,ADJ]", "NOUN,VERB,ADJ")
    line = one_error_line(cli(bad, f"--workdir={tmp_path}"))
    assert "unknown preset word 'VERB'" in line
    assert line.endswith("write the list in brackets: objective_curriculum.units.pos_nv.tags=[NOUN,VERB,ADJ].")


def test_long_run_on_cpu_warns_with_the_projected_time(capsys, monkeypatch):
    import jax

    from climb_jax import main

    c = schema.load("configs/vanilla.py")
    monkeypatch.setattr(jax, "default_backend", lambda: "tpu")
    main._warn_if_slow_on_cpu(c)
    assert capsys.readouterr().err == ""  # an accelerator: no warning
    monkeypatch.setattr(jax, "default_backend", lambda: "cpu")
    main._warn_if_slow_on_cpu(c)
    err = capsys.readouterr().err
    cores = len(os.sched_getaffinity(0))
    hours = schema.projected_cpu_seconds(c, cores) / 3600
    assert err.startswith("warning: no accelerator found; 400000 steps of 128 x 128 tokens of the 'small' model")
    assert f"about {hours:,.0f} hours on this host's {cores} CPU cores" in err
    main._warn_if_slow_on_cpu(schema.load("configs/vanilla.py:smoke"))
    assert capsys.readouterr().err == ""


def test_a_wrong_override_key_names_the_nearest_field_and_its_sections_fields(tmp_path):
    top = ", ".join(sorted(schema.base_config().keys()))
    trainer = ", ".join(sorted(schema.base_config().trainer.keys()))
    for arg, hint, section in [
        ("--config.trainng.steps=5", "Did you mean 'trainer'?", f"Fields of the config (top level): {top}."),
        ("--config.training.total_steps=5", "Did you mean 'trainer'?", f"Fields of the config (top level): {top}."),
        ("--config.total_steps=5", "Did you mean 'trainer.total_steps'?", f"Fields of the config (top level): {top}."),
        ("--config.trainer.steps=5", "Did you mean 'total_steps'?", f"Fields of the section trainer: {trainer}."),
    ]:
        line = one_error_line(cli("--config=configs/vanilla.py:smoke", arg, f"--workdir={tmp_path / 'run'}"))
        key = arg.split("=")[0]
        bad = key.split(".")[1] if "trainer." not in key else key.split(".")[2]
        assert line == f"error: unknown config key in {key}: there is no field '{bad}'. {hint} {section}", line
    assert not (tmp_path / "run").exists()


def test_the_preflight_usage_line_and_flag_list_spell_flags_alike():
    import re

    proc = subprocess.run([sys.executable, "-m", "climb_jax.aot", "--help"], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    usage, listed = proc.stdout.split("\nFlags:\n", 1)
    shown = set(re.findall(r"^  --(?:\[no\])?([a-z_-]+)", listed, flags=re.M))
    used = set(re.findall(r"--([a-z_-]+)=", usage.splitlines()[0])) - {"config.<key>"}
    assert used == {"config", "accelerator-type"} and used <= shown, (used, shown)
