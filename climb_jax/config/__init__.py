"""The configuration system: the choices every option validates against (`choices`, JAX-free), the
preset grammar of `--config=file.py:word,key=value` (`grammar`), the one schema every `configs/*.py`
starts from (`schema`; its `finetune` section, shared with configs/finetune.py: `finetune_section`)
and the checks of a resolved config (`check`)."""
