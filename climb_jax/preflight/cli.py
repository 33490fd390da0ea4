"""The pre-flight's command line (`python -m climb_jax.aot`): flags, help, one report or the table."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Sequence

from climb_jax.preflight.aot import _configure_jax, default_cache_dir, preflight
from climb_jax.preflight.report import enforce
from climb_jax.errors import ClimbError, ConfigError


def _define_flags():
    from absl import flags

    from climb_jax.preflight.table import TABLE_SIZES, TABLE_SLICES, TABLE_VARIANTS

    flags.DEFINE_string("accelerator_type", None, "TPU slice, e.g. v4-8, v4-32, v5litepod-16, v5p-8, v6e-8.")
    flags.DEFINE_string("topology", None, "libtpu topology name (default: derived from --accelerator-type, "
                        "e.g. v4-32 -> v4:2x2x4).")
    flags.DEFINE_boolean("extras", True, "Also compile the self-perplexity scoring and evaluation functions.")
    flags.DEFINE_boolean("json", False, "Print the report as one JSON object instead of text.")
    flags.DEFINE_boolean("table", False, "Compile the pre-flight table of launch/README.md (sizes x curricula x "
                         "slices) and print it as Markdown.")
    flags.DEFINE_string("table_slices", ",".join(TABLE_SLICES), "With --table: the slices.")
    flags.DEFINE_string("table_sizes", ",".join(TABLE_SIZES), "With --table: the model sizes.")
    flags.DEFINE_string("table_variants", ",".join(TABLE_VARIANTS), "With --table: the curriculum kinds.")
    flags.DEFINE_boolean("cached_only", False, "With --table: only what was compiled before (the rest is marked).")
    flags.DEFINE_string("cache_dir", None, "Where compiled figures are kept (default: $CLIMB_AOT_CACHE or ~/.cache/climb_jax/aot).")
    flags.DEFINE_boolean("cache", True, "Reuse cached figures of programs compiled before.")
    return flags.FLAGS


def help_text(FLAGS) -> str:
    lines = ["usage: python -m climb_jax.aot --config=configs/<file>.py[:<items>] --accelerator-type=<slice> "
             "[--config.<key>=<value> ...]", "       python -m climb_jax.aot --table", "", __doc__.strip(), "", "Flags:"]
    for name in ("config", "accelerator_type", "topology", "extras", "json", "cache", "cache_dir", "table",
                 "table_slices", "table_sizes", "table_variants", "cached_only"):
        flag = FLAGS[name]
        spelt = name.replace("_", "-")  # as the usage line and the launchers write them
        shown = f"--[no]{spelt}" if flag.boolean else f"--{spelt}"
        lines.append(f"  {shown:<20} {flag.help}")
    lines += ["", "Flags may be written with underscores as well (--accelerator_type=v4-8).",
              "The config files, their preset words and fields are those of `python -m climb_jax.main --help`."]
    return "\n".join(lines) + "\n"


def _dashes_to_underscores(argv: list[str]) -> list[str]:
    """`--accelerator-type=v4-8` (the launchers' spelling) means `--accelerator_type=v4-8`."""
    out = []
    for a in argv:
        if a.startswith("--") and not a.startswith("--config"):
            name, eq, value = a[2:].partition("=")
            a = "--" + name.replace("-", "_") + eq + value
        out.append(a)
    return out


def run(argv) -> None:
    del argv
    from climb_jax import main as cli

    FLAGS = cli.flags.FLAGS
    cache_dir = Path(FLAGS.cache_dir) if FLAGS.cache_dir else default_cache_dir()
    if FLAGS.table:
        split = lambda s: tuple(w for w in s.split(",") if w)  # noqa: E731
        def progress(row: dict) -> None:  # each row as it is done: a long run cut short keeps what it did
            print(f"{row['slice']} {row['size']} {row['variant']}: {row['seconds']:.0f} s", file=sys.stderr, flush=True)
            if FLAGS.json:
                print(json.dumps(row), flush=True)

        from climb_jax.preflight.table import markdown_table, table_rows

        rows = table_rows(split(FLAGS.table_sizes), split(FLAGS.table_variants), split(FLAGS.table_slices),
                          cache_dir=cache_dir, progress=progress, cached_only=FLAGS.cached_only)
        if not FLAGS.json:
            print(markdown_table(rows))
        return
    config = cli._CONFIG.value
    if config is None:
        raise ConfigError("--config is required, e.g. --config=configs/vanilla.py:small,bf16")
    if not FLAGS.accelerator_type:
        raise ConfigError("--accelerator-type is required, e.g. --accelerator-type=v4-8")
    label = config.get("label") or cli.default_label(cli._config_arg(sys.argv))
    kwargs = dict(topology=FLAGS.topology, extras=FLAGS.extras, label=label)
    report = preflight(config, FLAGS.accelerator_type, cache_dir=cache_dir if FLAGS.cache else None, **kwargs)
    print(json.dumps({**report.summary(), "report": report.to_json()}) if FLAGS.json else report.render(), flush=True)
    enforce(report)


def main(argv: Sequence[str] | None = None) -> None:
    _configure_jax()
    from absl import app

    from climb_jax import main as cli
    from climb_jax.errors import print_error

    FLAGS = _define_flags()
    args = _dashes_to_underscores(list(sys.argv if argv is None else argv))
    if any(a in cli._HELP_FLAGS for a in args[1:]):
        sys.stdout.write(help_text(FLAGS))
        return
    try:
        app.run(run, argv=args, flags_parser=cli._parse_flags)
    except ClimbError as e:
        print_error(e)
        sys.exit(2)
