"""`python -m climb_jax.aot`: the TPU pre-flight's command (the work lives in `climb_jax.preflight`).

  python -m climb_jax.aot --config=configs/vanilla.py:small,bf16 --accelerator-type=v4-8
  python -m climb_jax.aot --table                # the pre-flight table of launch/README.md
"""

if __name__ == "__main__":
    from climb_jax.preflight.cli import main

    main()
