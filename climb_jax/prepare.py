"""Prepare once, read everywhere: `python -m climb_jax.prepare --config=configs/<name>.py[:preset] [--workdir=DIR]`.

Writes the corpus, tokenized, tagged, packed and sorted by the config's initial difficulty scores, as a
TFDS dataset of array_record shards (`climb_jax.data.dataset.prepare_data`) under `data.prepared_dir`
(a local folder or gs://; default `<cache_dir>/prepared`, the cache of `--workdir` when given). The
flags are `climb_jax.main`'s, so the same command line with `prepare` in place of `main` prepares
exactly the version that run will open. Preparing again with the same inputs does nothing; changed
inputs give a new version. Prints the version's folder and fingerprint.
"""

from __future__ import annotations

import os
import sys

from absl import app

from climb_jax import main as main_lib
from climb_jax import uri
from climb_jax.errors import ClimbError, ConfigError, print_error


def default_cache_dir(data_cfg, workdir: str | None) -> str:
    """The run's cache with `--workdir`, else `data.cache_dir`, else a per-user folder."""
    from climb_jax.data.dataset import cache_dir_for

    if workdir:
        return cache_dir_for(data_cfg, workdir)
    return str(data_cfg.cache_dir or os.path.join(os.path.expanduser("~"), ".cache", "climb_jax"))


def run(argv) -> None:
    main_lib._quiet_libraries(sys.argv)
    del argv
    config = main_lib._CONFIG.value
    if config is None:
        raise ConfigError("--config is required, e.g. --config=configs/data_cl.py:ngram (the run's own config)")
    workdir = main_lib._WORKDIR.value
    if workdir:
        uri.check(workdir, "--workdir")
    from climb_jax.config import schema
    from climb_jax.curriculum.data_curriculum import check_corpus_sources
    from climb_jax.data.dataset import prepare_data
    from climb_jax.eval.progress import is_terminal

    schema.validate(config)
    check_corpus_sources(config)
    data = prepare_data(config.data, default_cache_dir(config.data, workdir),
                        progress=main_lib._PROGRESS.value and is_terminal(sys.stdout),
                        curriculum=config.data_curriculum)
    shards = data.manifest["prepared"]["train_shards"]
    print(f"prepared {data.directory}\n  fingerprint {data.fingerprint}\n  {len(data.train):,} training rows of "
          f"{data.manifest['seq_len']} tokens in {shards} shards, ordered by {data.scores_settings}", flush=True)


def main() -> None:
    try:
        app.run(run, flags_parser=main_lib._parse_flags)
    except ClimbError as e:
        print_error(e)
        sys.exit(2)


if __name__ == "__main__":
    main()
