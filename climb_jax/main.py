"""Entry point: `python -m climb_jax.main --config=configs/<name>.py[:preset,...] --workdir=DIR`.

Pretraining configs train (or resume) and evaluate; `configs/finetune.py` fine-tunes a pretrained run.
Overrides: `--config.trainer.lr=3e-4`. Errors a user can fix are printed without a traceback (exit 2).
"""

from __future__ import annotations

import os
import re
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from climb_jax.errors import ClimbError, print_error

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/vanilla.py:smoke.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and evaluations (local or gs://).")
_PROGRESS = flags.DEFINE_boolean("progress", True, "Show progress bars.")
_PLOT = flags.DEFINE_boolean("plot", True, "Draw the run's curriculum pacing curves to <workdir>/curricula.png.")


def default_label(config_arg: str) -> str:
    """'configs/vocab_cl.py:pos_tags,log,smoke' -> 'vocab_cl:pos_tags-log' (smoke and key=value dropped)."""
    path, _, arg = config_arg.partition(":")
    stem = os.path.splitext(os.path.basename(path))[0]
    words = [w for w in arg.split(",") if w and "=" not in w and w != "smoke"]
    return f"{stem}:{'-'.join(words)}" if words else stem


def _config_arg(argv: list[str]) -> str:
    for i, a in enumerate(argv):
        if a.startswith("--config="):
            return a.split("=", 1)[1]
        if a == "--config" and i + 1 < len(argv):
            return argv[i + 1]
    return ""


def _quiet_libraries(argv: list[str]) -> None:
    """Library INFO logs (orbax prints several lines per save) drown the run's own messages; keep
    warnings unless the user asked for a verbosity with -v/--verbosity."""
    if not any(a.startswith(("-v", "--verbosity")) for a in argv[1:]):
        logging.set_verbosity(logging.WARNING)


def run(argv) -> None:
    _quiet_libraries(sys.argv)
    del argv
    config = _CONFIG.value
    if config is None:
        raise ClimbError("--config is required, e.g. --config=configs/vanilla.py:smoke")
    if not _WORKDIR.value:
        raise ClimbError("--workdir is required: the directory the run writes to (and resumes from).")
    workdir = _WORKDIR.value
    if "mesh" in config and "distributed" in config:
        from climb_jax.parallel import mesh as mesh_lib

        mesh_lib.setup_runtime(config)  # before anything starts JAX
    if config.get("mode", "pretrain") == "finetune":
        from climb_jax.eval import finetune

        finetune.run(config, workdir)
        return
    with config.unlocked():
        if not config.label:
            config.label = default_label(_config_arg(sys.argv))
    from climb_jax.train.loop import train_and_evaluate

    logging.info("config %s -> workdir %s", config.label, workdir)
    print(f"climb_jax: {config.label} (seed {config.seed}) -> {workdir}", flush=True)
    if _PLOT.value:
        _plot(config, workdir)
    result = train_and_evaluate(config, workdir, progress=_PROGRESS.value)
    print(f"done: step {result['step']}; outputs in {workdir}", flush=True)


def _plot(config, workdir) -> None:
    if config.vocab_curriculum.kind == "none" and config.data_curriculum.scorer == "none":
        return
    try:
        from climb_jax.curriculum.plot import plot_curricula
        from climb_jax import config_lib

        config_lib.validate(config)
        os.makedirs(workdir, exist_ok=True) if "://" not in workdir else None
        plot_curricula(config, os.path.join(workdir, "curricula.png"))
    except ClimbError:
        raise
    except Exception as e:  # noqa: BLE001 - a plot must never stop a run
        logging.warning("could not draw the curriculum plot: %s", e)


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with mistakes in `--config.<key>=<value>` overrides reported as a ClimbError
    (one line, exit 2) instead of ml_collections' traceback (a misspelt key) or absl's usage dump."""
    try:
        return flags.FLAGS(argv)
    except ClimbError:
        raise
    except flags.Error as e:
        raise ClimbError(str(e).rstrip(". ")) from None
    except (AttributeError, KeyError) as e:
        inner = e
        while isinstance(inner, BaseException) and inner.args:  # KeyError wrapped in AttributeError
            inner = inner.args[0]
        first, _, rest = str(inner).partition("\n")
        key = first.strip().strip("'\"")
        hint = re.search(r'Did you mean "([^"]+)"', rest)
        culprits = [a.split("=", 1)[0] for a in argv
                    if a.startswith("--config.") and key in a.split("=", 1)[0].split(".")[1:]]
        where = culprits[0] if culprits else "a --config.<key> override"
        raise ClimbError(f"unknown config key in {where}: there is no field '{key}'."
                         + (f" Did you mean '{hint.group(1)}'?" if hint else "")) from None


def main() -> None:
    try:
        app.run(run, flags_parser=_parse_flags)
    except ClimbError as e:
        print_error(e)
        sys.exit(2)


if __name__ == "__main__":
    main()
