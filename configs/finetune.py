"""Fine-tuning a pretrained run on a (Super)GLUE-style task, as the BabyLM pipeline does.

  python -m climb_jax.main --config=configs/finetune.py:rte --config.init_from=<pretraining workdir> \
      --config.finetune.data_dir=<folder with rte.train.jsonl, rte.valid.jsonl> --workdir=<same or other dir>
  python -m climb_jax.main --config=configs/finetune.py:rte,mrpc,seeds3 ...   # two tasks, three seeds
  python -m climb_jax.main --config=configs/finetune.py:per_epoch,rte ...     # the per-epoch protocol
  python -m climb_jax.main --config=configs/finetune.py:smoke --config.init_from=<pretraining workdir> \
      --workdir=<dir>          # 64 examples, 2 epochs; no data_dir: WSC sample shipped in the package
  ... --config.finetune.task=mytask --config.finetune.text_fields=premise,hypothesis \
      --config.finetune.num_classes=3                                        # any other task
  (in the preset argument, a list goes in brackets: configs/finetune.py:finetune.text_fields=[premise,hypothesis])

Protocols (finetune.protocol): babylm2023 (default: the BabyLM 2023 pipeline as the reference ran it:
lr 5e-5, batch 64, up to 10 epochs, evaluation every 200 steps, patience 10, seed 12, selection by F1
for binary tasks and accuracy otherwise) and per_epoch (evaluation after every epoch, patience 3).
Preset words: the built-in tasks (rte, mrpc, wsc, boolq, multirc, mnli, mnli-mm, qqp, cola, sst2,
qnli), the protocols, seeds3, seeds5, smoke; and key=value items (finetune.lr=1e-4).
Limits: finetune.max_train_examples, finetune.max_valid_examples, finetune.epochs, finetune.seeds.
Results: <init_from>/finetune/<task>.json.
"""

from climb_jax.eval.finetune_config import build_config


def get_config(arg=None):
    return build_config(arg)
