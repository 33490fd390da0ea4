"""The README's install makes the package importable from any folder, its command lines run there, and it
ships the data that lets a fresh clone train, evaluate and test offline."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from tests.conftest import REPO


def _elsewhere(args: list[str], tmp_path) -> subprocess.CompletedProcess:
    """`python <args>` from a folder outside the checkout, without PYTHONPATH: only an installed package
    is found there."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([sys.executable, *args], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)


def test_the_package_is_installed_from_this_checkout(tmp_path):
    proc = _elsewhere(["-c", "import climb_jax; print(climb_jax.__file__)"], tmp_path)
    assert proc.returncode == 0, (
        "climb_jax is not importable outside the checkout: install it with the README's command "
        f"(pip install -r requirements-dev.txt, which holds `-e .`)\n{proc.stderr[-2000:]}")
    assert proc.stdout.strip() == str(REPO / "climb_jax" / "__init__.py")


def test_the_command_lines_run_from_another_folder(tmp_path):
    compare = _elsewhere(["-m", "climb_jax.compare", "--help"], tmp_path)
    assert compare.returncode == 0 and "--out" in compare.stdout, compare.stderr[-2000:]
    # The training command with a config file named by its path: it reads the config and reports the
    # mistaken override as the one-line error of every bad input (so the CLI ran, from here).
    main = _elsewhere(["-m", "climb_jax.main", f"--config={REPO / 'configs' / 'vanilla.py'}:smoke",
                       f"--workdir={tmp_path / 'run'}", "--noprogress", "--config.trainer.lr=fast"], tmp_path)
    assert main.returncode == 2, main.stderr[-2000:]
    assert main.stderr.strip().splitlines()[-1].startswith("error: ") and "trainer.lr" in main.stderr
    assert "Traceback" not in main.stderr


def test_the_package_data_is_declared_and_present():
    """The corpus sample, the bundled tagger and the BLiMP sample: what lets a clone run offline."""
    pyproject = (REPO / "pyproject.toml").read_text()
    assert '"data/sample/**/*"' in pyproject and '"eval/sample/**/*"' in pyproject
    sample = REPO / "climb_jax" / "data" / "sample"
    assert {p.name for p in (sample / "train").iterdir()} >= {"aochildes.train", "switchboard.train"}
    assert (sample / "nltk_tagger.tar.xz").is_file()
    assert len(list((REPO / "climb_jax" / "eval" / "sample" / "blimp_filtered").glob("*.jsonl"))) > 10


def test_the_runtime_does_not_require_torch():
    """torch is the reference only: not among the package's dependencies (requirements.txt)."""
    runtime = (REPO / "requirements.txt").read_text().lower()
    assert not [l for l in runtime.splitlines() if l.split("#")[0].strip().startswith("torch")]
    dev = (REPO / "requirements-dev.txt").read_text().lower()
    assert not [l for l in dev.splitlines() if l.split("#")[0].strip().startswith("torch")]
    assert "-e ." in dev.splitlines()


def test_the_readme_commands_carry_their_required_flags():
    """The README's command lines as a user copies them: every comparison names its --out, and every
    full-size training command names its corpus (the shipped sample is for :smoke runs)."""
    readme = (REPO / "README.md").read_text()
    lines = [l.strip() for l in readme.splitlines() if l.strip().startswith("python -m climb_jax.")]
    compare = [l for l in lines if l.startswith("python -m climb_jax.compare")]
    assert compare and all("--out=" in l for l in compare)
    smoke = re.compile(r"\.py:(\S*,)?smoke\b")  # the preset words include `smoke`
    training = [l for l in lines if l.startswith("python -m climb_jax.main") and not smoke.search(l)]
    assert training and all("--config.data.corpus=" in l for l in training), training
    assert "--noprogress" in readme and "python -m pytest -q tests" in readme
