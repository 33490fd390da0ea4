"""The `finetune` section of the config schema: one definition for `configs/finetune.py`
(`eval/finetune_config.py`, which also holds the protocols' values and turns a section into the
`Settings` of one task) and for every pre-training config (`schema.base_config()` carries it, so a
run's config can name its fine-tuning data and settings). JAX-free, like the rest of the schema.
"""

from __future__ import annotations

from ml_collections import ConfigDict, config_dict

from climb_jax.config import choices


def finetune_section(task: str = "rte") -> ConfigDict:
    """The `finetune` config section; data_dir has no default (such data is never bundled)."""
    def unset_int():  # a new reference per field: a shared one would tie the fields together
        return config_dict.placeholder(int)

    def unset_float():
        return config_dict.placeholder(float)

    return ConfigDict(dict(
        protocol=choices.DEFAULT_FINETUNE_PROTOCOL,  # choices.FINETUNE_PROTOCOLS
        task=task,  # a task name, or several: "rte,mrpc" (in a preset: finetune.task=[rte,mrpc])
        data_dir="",  # folder of <task>.train.jsonl / <task>.valid.jsonl (or the BabyLM pipeline's names)
        # Task description; empty = the built-in one (eval/tasks.py).
        text_fields="",  # "sentence1,sentence2"; '+' joins fields of one segment: "paragraph,question+answer"
        label_field="",
        num_classes=0,
        # "f1,accuracy": the first is the headline; it selects the checkpoint, except under babylm2023 where
        # binary tasks are selected by f1 (when listed), as the pipeline's metric_for_best_model
        metrics="",
        label_names="",  # for string labels: "entailment,not_entailment" (position = class id)
        joiner="",  # between the '+'-joined fields of text_fields (default: a space)
        lr=5e-5,
        batch_size=64,
        eval_batch_size=128,
        max_seq_len=128,
        max_grad_norm=1.0,  # over encoder and classifier, torch's rule (train/optim.py clip_like_torch)
        adam_b1=0.9,
        adam_b2=0.999,
        adam_eps=1e-8,
        # Unset (None / ()) = the protocol's value (eval/finetune_config.py PROTOCOLS).
        epochs=unset_int(),  # the most epochs
        patience=unset_int(),  # evaluations without improvement before stopping; 0 = never stop early
        threshold=unset_float(),  # an improvement must exceed this to reset the patience
        eval_every=unset_int(),  # steps between evaluations; 0 = after every epoch
        select_every=unset_int(),  # a checkpoint can be selected only at multiples of this step; 0 = any evaluation
        seeds=(),  # fine-tuning seeds
        warmup_fraction=unset_float(),
        weight_decay=unset_float(),
        dropout_rate=-1.0,  # < 0: the pretrained model's dropout
        dtype="",  # "" = the pretrained model's; or one of choices.DTYPES
        # Limits for quick looks (climb_jax.evaluate exposes them): 0 = all.
        max_train_examples=0,  # the first N training examples
        max_valid_examples=0,  # the first N validation examples
        eval_train=False,  # also score the training examples at every evaluation
    ))
