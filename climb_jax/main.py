"""Entry point: `python -m climb_jax.main --config=configs/<name>.py[:preset,...] --workdir=DIR`.

Pretraining configs train (or resume) and evaluate; `configs/finetune.py` fine-tunes a pretrained run.
Overrides: `--config.trainer.lr=3e-4`. Errors a user can fix are printed without a traceback (exit 2).
"""

from __future__ import annotations

import ast
import os
import re
import sys
import textwrap

from absl import app, flags, logging
from ml_collections import config_flags

from climb_jax import console, uri

from climb_jax.config import choices, grammar, schema
from climb_jax.errors import ClimbError, ConfigError, print_error

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/vanilla.py:smoke.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and evaluations (local or gs://).")
_PROGRESS = flags.DEFINE_boolean("progress", True, "Progress bars on a terminal; --noprogress: plain lines instead.")
_PLOT = flags.DEFINE_boolean("plot", True, "Draw the run's curriculum pacing curves to <workdir>/curricula.png.")

_HELP_FLAGS = ("--help", "-h", "--helpshort", "-help", "-?")
# A run projected to take longer than this on a CPU-only host gets a warning with the projection.
_CPU_WARN_SECONDS = 3600

# The fields `--help` shows: the ones a user sets most (every field: print(schema.base_config())).
_MAIN_FIELDS = {
    "seed": "the random seed",
    "data.corpus": "'embedded' (the small sample shipped with the package), a BabyLM folder, or hf:<dataset>",
    "data.cache_dir": "where prepared data is kept (default: <workdir>/cache)",
    "model.size": f"a preset word sets the shape: {', '.join(choices.MODEL_SIZES)}",
    "model.dtype": "activation dtype",
    "trainer.total_steps": "training steps",
    "trainer.batch_size": "global batch, split over the devices",
    "trainer.lr": "peak learning rate of the encoder",
    "trainer.checkpoint_every": "steps between checkpoints",
    "eval.blimp_dir": "minimal-pair suite: 'blimp_filtered' (whole), 'embedded' (sample) or a folder",
    "eval.method": "how a sentence is scored",
    "vocab_curriculum.kind": "vocabulary curriculum",
    "data_curriculum.scorer": "data curriculum",
    "mesh.cpu_devices": "on CPU: XLA devices to split the host into (0 = one per core)",
}


def default_label(config_arg: str) -> str:
    """'configs/vocab_cl.py:pos_tags,log,smoke' -> 'vocab_cl:pos_tags-log' (smoke and key=value dropped)."""
    return schema.default_label(config_arg)


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
        raise ConfigError("--config is required, e.g. --config=configs/vanilla.py:smoke (--help lists the files)")
    if not _WORKDIR.value:
        raise ClimbError("--workdir is required: the directory the run writes to (and resumes from).")
    workdir = _WORKDIR.value
    uri.check(workdir, "--workdir")  # a missing gcsfs or a wrong bucket, before any work is done
    from climb_jax.parallel import mesh as mesh_lib

    mesh_lib.skip_absent_tpu()  # fine-tuning too; before anything starts JAX
    finetune = config.get("mode", "pretrain") == "finetune"
    parsed = None if finetune else schema.validate(config, for_run=True)
    if "mesh" in config and "distributed" in config:
        mesh_lib.setup_runtime(config)  # before anything starts JAX
    if finetune:
        from climb_jax.eval import finetune as finetune_lib

        finetune_lib.run(config, workdir)
        return
    with config.unlocked():
        if not config.label:
            config.label = default_label(_config_arg(sys.argv))
    from climb_jax.train import ensemble_members

    if ensemble_members.is_ensemble(config):  # several runs trained as one vmapped step
        _run_ensemble(config, workdir)
        return
    from climb_jax.train.loop import train_and_evaluate

    logging.info("config %s -> workdir %s", config.label, workdir)
    print(f"climb_jax: {config.label} (seed {config.seed}) -> {workdir}", flush=True)
    _warn_if_slow_on_cpu(config)
    if _PLOT.value:
        _plot(config, parsed, workdir)
    result = train_and_evaluate(config, workdir, progress=_PROGRESS.value)
    if result["stop_reason"] == "interrupted":  # Ctrl-C: saved, and said how to resume
        sys.exit(130)
    print(f"done: step {result['step']}; outputs in {workdir}", flush=True)


def _run_ensemble(config, workdir: str) -> None:
    from climb_jax.train import ensemble

    members = ensemble.expand(config)
    print(f"climb_jax: ensemble of {len(members)} runs ({', '.join(m.dirname for m in members)}) -> {workdir}",
          flush=True)
    _warn_if_slow_on_cpu(members[0].config)
    result = ensemble.train_members(members, workdir, progress=_PROGRESS.value)
    if result["stop_reason"] == "interrupted":
        sys.exit(130)
    print(f"ensemble at step {result['step']} ({result['stop_reason']}):", flush=True)
    for line in ensemble.summary(result):
        print(line, flush=True)
    print(f"compare the arms: python -m climb_jax.compare {workdir} --out={workdir}/report", flush=True)


def _warn_if_slow_on_cpu(config) -> None:
    """A full-size run on a host without an accelerator would take weeks: say so before it starts."""
    import jax

    if jax.default_backend() != "cpu":
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    seconds = schema.projected_cpu_seconds(config, cores)
    if seconds < _CPU_WARN_SECONDS:
        return
    t = config.trainer
    print(f"warning: no accelerator found; {t.total_steps} steps of {t.batch_size} x {config.data.seq_len} tokens "
          f"of the '{config.model.size}' model would take about {seconds / 3600:,.0f} hours on this host's "
          f"{cores} CPU cores (projected from {schema.CPU_MODEL_FLOPS_PER_CORE / 1e9:.0f} GFLOP/s per core); "
          "run on a GPU or TPU, or try the smoke preset first.", file=sys.stderr, flush=True)


def _plot(config, parsed, workdir) -> None:
    if parsed.vocab_pacing is None and parsed.data_pacing is None:
        return
    try:
        from climb_jax.curriculum.plot import plot_curricula

        plot_curricula(config, os.path.join(workdir, "curricula.png"), parsed=parsed)
    except ClimbError:
        raise
    except Exception as e:  # noqa: BLE001 - a plot must never stop a run
        logging.warning("could not draw the curriculum plot: %s", e)


# ------------------------------------------------------------------------------------------------
# Help and the config file argument.


def _docstring(path) -> str:
    """A config file's docstring, read without importing it (some import JAX)."""
    try:
        return ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
    except (OSError, SyntaxError):
        return ""


def help_text() -> str:
    """What `--help` prints: usage, the flags, every config file's presets and the main fields."""
    base = schema.base_config()
    lines = [
        "usage: python -m climb_jax.main --config=configs/<file>.py[:<items>] --workdir=DIR "
        "[--config.<key>=<value> ...]",
        "",
        *__doc__.strip().splitlines()[2:],
        "",
        "Flags:",
    ]
    for name in ("config", "workdir", "progress", "plot"):
        flag = flags.FLAGS[name]
        shown = f"--[no]{name}" if flag.boolean else f"--{name}"
        lines.append(f"  {shown:<16} {flag.help}")
    lines += [
        "",
        "Preset items after the file name, separated by commas: the file's preset words (below; `smoke`",
        "shrinks any config to minutes on a CPU), key=value, and lists in brackets: key=[a,b].",
        "",
        "Config files:",
    ]
    for path in schema.config_files():
        lines.append(f"  configs/{path.name}")
        lines += [f"      {line}" if line else "" for line in _docstring(path).splitlines()]
        lines.append("")
    lines.append("Main fields (--config.<key>=<value>; the base default, which a config file may change):")
    for key, what in _MAIN_FIELDS.items():
        value = base
        for part in key.split("."):
            value = value[part]
        valid = choices.FIELD_CHOICES.get(key)
        extra = f"; one of: {', '.join(valid)}" if valid else ""
        lines.append(f"  {key} = {value!r}")
        lines += textwrap.wrap(f"{what}{extra}", width=96, initial_indent="      ", subsequent_indent="      ")
    return "\n".join(lines) + "\n"


def _resolve_config_flag(argv: list[str]) -> list[str]:
    """`--config=<file>[:items]` with the file checked (a missing one is a ConfigError listing the
    config files) and found from any working directory (`schema.resolve_config_path`)."""
    out = list(argv)
    for i, a in enumerate(out):
        if a.startswith("--config=") or (a == "--config" and i + 1 < len(out)):
            j, spec = (i, a.split("=", 1)[1]) if a.startswith("--config=") else (i + 1, out[i + 1])
            path, words = schema.split_spec(spec)
            resolved = str(schema.resolve_config_path(path))
            if resolved != path:
                new = resolved if words is None else f"{resolved}:{words}"
                out[j] = f"--config={new}" if j == i else new
            break
    return out


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with mistakes in `--config.<key>=<value>` overrides reported as a ClimbError
    (one line, exit 2) instead of ml_collections' traceback (a misspelt key) or absl's usage dump."""
    if any(a in _HELP_FLAGS for a in argv[1:]):
        sys.stdout.write(help_text())
        sys.exit(0)
    argv = _resolve_config_flag(argv)
    try:
        return flags.FLAGS(argv)
    except ClimbError:
        raise
    except (flags.Error, AttributeError, KeyError) as e:
        unknown = _unknown_override(argv)
        if unknown is not None:
            raise unknown from None
        if isinstance(e, flags.Error):
            raise ClimbError(str(e).rstrip(". ")) from None
        inner = e
        while isinstance(inner, BaseException) and inner.args:  # KeyError wrapped in AttributeError
            inner = inner.args[0]
        first, _, rest = str(inner).partition("\n")
        key = first.strip().strip("'\"")
        hint = re.search(r'Did you mean "([^"]+)"', rest)
        culprits = [a.split("=", 1)[0] for a in argv
                    if a.startswith("--config.") and key in a.split("=", 1)[0].split(".")[1:]]
        where = culprits[0] if culprits else "a --config.<key> override"
        raise ConfigError(f"unknown config key in {where}: there is no field '{key}'."
                         + (f" Did you mean '{hint.group(1)}'?" if hint else "")) from None


def _unknown_override(argv: list[str]) -> ConfigError | None:
    """The error for the first `--config.<key>` override whose key the loaded config lacks, with the
    nearest field and the fields of its section (`grammar.missing_field`); None if the config file did
    not load or every key exists."""
    config = flags.FLAGS["config"].value
    if config is None:  # the override failed inside the --config flag's own parsing: load the file again
        try:
            config = grammar.load(_config_arg(argv))
        except Exception:  # noqa: BLE001 - the file's own error is reported as it was before
            return None
    for a in argv:
        if a.startswith("--config."):
            key = a[len("--config."):].split("=", 1)[0]
            missing = grammar.missing_field(config, key)
            if missing:
                return ConfigError(f"unknown config key in --config.{key}: {missing}")
    return None


def main() -> None:
    # Writes to a stream whose reader is gone (`2>&1 | tee log`, tee killed by the same Ctrl-C) are dropped:
    # a stop signal still saves, releases the workdir and exits with its own status.
    with console.guarded():
        try:
            app.run(run, flags_parser=_parse_flags)
        except ClimbError as e:
            print_error(e)
            sys.exit(2)
        except KeyboardInterrupt:  # Ctrl-C before the run handles it (training saves and exits 130 itself)
            print("\ninterrupted; nothing was running that needed saving", file=sys.stderr, flush=True)
            sys.exit(130)


if __name__ == "__main__":
    main()
