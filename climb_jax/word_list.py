"""`python -m climb_jax.word_list`: a ranked word list for `vocab_curriculum.kind=word_list`, derived from an
age-ordered corpus source (each word ranked by where it first appears; see `curriculum/word_list.py`).

  python -m climb_jax.word_list --corpus=embedded --source=aochildes --out=aoa.tsv
  python -m climb_jax.main --config=configs/vocab_cl.py:word_list,smoke \\
      --config.vocab_curriculum.word_list=aoa.tsv --workdir=/tmp/climb/word_list
"""

from __future__ import annotations

import sys

from absl import app, flags

from climb_jax.errors import ClimbError, print_error

flags.DEFINE_string("corpus", "embedded", "A corpus as data.corpus takes it: 'embedded' or a BabyLM directory.")
flags.DEFINE_string("source", "aochildes", "The age-ordered source of its training split.")
flags.DEFINE_string("out", None, "Where to write the TSV (word<TAB>rank).")
FLAGS = flags.FLAGS


def run(corpus: str, source: str, out: str) -> str:
    from ml_collections import ConfigDict

    from climb_jax.config import schema
    from climb_jax.curriculum import word_list
    from climb_jax.data import corpus as corpus_lib

    data_cfg = ConfigDict(dict(schema.base_config().data.to_dict(), corpus=corpus))
    found = corpus_lib.find_corpus(data_cfg)
    picked = [s for s in found.splits["train"] if s.name == source]
    if not picked:
        names = ", ".join(sorted({s.name for s in found.splits["train"]}))
        raise ClimbError(f"--source={source} is not a training source of {corpus}; choose one of: {names}.")
    opts = corpus_lib.read_options(data_cfg)
    count = word_list.derive((line for s in picked for line in s.raw_lines(opts)), out)
    return f"wrote {count} words ranked by first appearance in {source} to {out}"


def main(argv) -> None:
    del argv
    if not FLAGS.out:
        print_error("--out is required: the path of the TSV to write.")
        sys.exit(2)
    try:
        print(run(FLAGS.corpus, FLAGS.source, FLAGS.out))
    except ClimbError as e:
        print_error(str(e))
        sys.exit(2)


if __name__ == "__main__":
    app.run(main)
