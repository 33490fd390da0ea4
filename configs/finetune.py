"""Fine-tuning a pretrained run on a (Super)GLUE-style task, as the BabyLM pipeline does.

  python -m climb_jax.main --config=configs/finetune.py:rte --config.init_from=<pretraining workdir> \
      --config.finetune.data_dir=<folder with rte.train.jsonl, rte.valid.jsonl> --workdir=<same or other dir>
  python -m climb_jax.main --config=configs/finetune.py:mrpc,seeds3 ...      # three fine-tuning seeds
  python -m climb_jax.main --config=configs/finetune.py:smoke ...             # 64 examples, 2 epochs
  ... --config.finetune.task=mytask --config.finetune.text_fields=premise,hypothesis \
      --config.finetune.num_classes=3                                        # any other task

Preset words: the built-in tasks (rte, mrpc, wsc, boolq, multirc, mnli, qqp, cola, sst2, qnli),
seeds3, seeds5, smoke; and key=value pairs (finetune.lr=1e-4). Results: <init_from>/finetune/<task>.json.
"""

from climb_jax.eval.finetune import build_config


def get_config(arg=None):
    return build_config(arg)
