"""Conversion between our parameter tree and Hugging Face's `RobertaPreLayerNormForMaskedLM`.

Conventions bridged here:
  * Flax kernels are `(in, out)`, torch Linear weights `(out, in)`.
  * Our fused QKV kernel `[H, 3, heads, head_dim]` splits into HF's `query`/`key`/`value`; the
    output kernel `[heads, head_dim, H]` is HF's `attention.output.dense`.
  * LayerNorm `scale` is torch's `weight`.
  * The MLM decoder is untied. HF keeps both `lm_head.decoder.bias` (used in the forward pass)
    and `lm_head.bias` (tied to it when embeddings are tied); both are written with the same
    values, and reading prefers `lm_head.decoder.bias`.
Only the MLM model is exported; auxiliary heads (`pos_<unit>`) have no HF counterpart and are
left out. Arrays come back as float32 numpy arrays, so no torch is needed here.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from climb_jax.constants import BOS_ID, EOS_ID
from climb_jax.errors import CheckpointError
from climb_jax.models.roberta import RobertaConfig

_P = "roberta_prelayernorm"


def _np(x: Any) -> np.ndarray:
    """float32 numpy view of a jax/numpy array or a torch tensor (without importing torch)."""
    if hasattr(x, "detach"):  # torch.Tensor
        x = x.detach().cpu().float().numpy()
    return np.array(x, dtype=np.float32)  # an owned, writable copy


def _ln(tree: Mapping, prefix: str, out: dict) -> None:
    out[f"{prefix}.weight"] = _np(tree["scale"])
    out[f"{prefix}.bias"] = _np(tree["bias"])


def _linear(tree: Mapping, prefix: str, out: dict) -> None:
    out[f"{prefix}.weight"] = np.ascontiguousarray(_np(tree["kernel"]).T)
    out[f"{prefix}.bias"] = _np(tree["bias"])


def to_hf_state_dict(params: Mapping, cfg: RobertaConfig) -> dict[str, np.ndarray]:
    """Our `{'encoder', 'mlm_head', ...}` tree -> HF state dict (contiguous float32 numpy arrays)."""
    if "encoder" not in params or "mlm_head" not in params:
        raise CheckpointError(
            f"expected a masked-LM parameter tree with 'encoder' and 'mlm_head', got keys {sorted(params)}."
        )
    enc, head = params["encoder"], params["mlm_head"]
    H = cfg.hidden_size
    sd: dict[str, np.ndarray] = {}
    emb = enc["embeddings"]
    sd[f"{_P}.embeddings.word_embeddings.weight"] = _np(emb["word_embeddings"]["embedding"])
    sd[f"{_P}.embeddings.position_embeddings.weight"] = _np(emb["position_embeddings"]["embedding"])
    sd[f"{_P}.embeddings.token_type_embeddings.weight"] = _np(emb["token_type_embeddings"]["embedding"])
    _ln(emb["layer_norm"], f"{_P}.embeddings.LayerNorm", sd)
    for i in range(cfg.num_layers):
        layer = enc[f"layers_{i}"]
        pre = f"{_P}.encoder.layer.{i}"
        qkv_kernel = _np(layer["attention"]["qkv"]["kernel"])  # [H, 3, N, D]
        qkv_bias = _np(layer["attention"]["qkv"]["bias"])  # [3, N, D]
        for j, name in enumerate(("query", "key", "value")):
            sd[f"{pre}.attention.self.{name}.weight"] = np.ascontiguousarray(qkv_kernel[:, j].reshape(H, H).T)
            sd[f"{pre}.attention.self.{name}.bias"] = qkv_bias[j].reshape(H)
        out = layer["attention"]["out"]
        sd[f"{pre}.attention.output.dense.weight"] = np.ascontiguousarray(_np(out["kernel"]).reshape(H, H).T)
        sd[f"{pre}.attention.output.dense.bias"] = _np(out["bias"])
        _ln(layer["attention_norm"], f"{pre}.attention.LayerNorm", sd)
        _ln(layer["mlp_norm"], f"{pre}.intermediate.LayerNorm", sd)
        _linear(layer["mlp"]["intermediate"], f"{pre}.intermediate.dense", sd)
        _linear(layer["mlp"]["output"], f"{pre}.output.dense", sd)
    _ln(enc["final_norm"], f"{_P}.LayerNorm", sd)
    _linear(head["dense"], "lm_head.dense", sd)
    _ln(head["layer_norm"], "lm_head.layer_norm", sd)
    _linear(head["decoder"], "lm_head.decoder", sd)
    sd["lm_head.bias"] = sd["lm_head.decoder.bias"].copy()
    return sd


def _expect_shapes(sd: Mapping[str, np.ndarray], cfg: RobertaConfig) -> None:
    """Raises CheckpointError naming missing keys or the first shape that does not fit `cfg`."""
    H, I, V = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
    want = {
        f"{_P}.embeddings.word_embeddings.weight": (V, H),
        f"{_P}.embeddings.position_embeddings.weight": (cfg.position_table_size, H),
        f"{_P}.embeddings.token_type_embeddings.weight": None,  # checked below: >= 1 row
        f"{_P}.embeddings.LayerNorm.weight": (H,),
        f"{_P}.embeddings.LayerNorm.bias": (H,),
        f"{_P}.LayerNorm.weight": (H,),
        f"{_P}.LayerNorm.bias": (H,),
        "lm_head.dense.weight": (H, H),
        "lm_head.dense.bias": (H,),
        "lm_head.layer_norm.weight": (H,),
        "lm_head.layer_norm.bias": (H,),
        "lm_head.decoder.weight": (V, H),
    }
    for i in range(cfg.num_layers):
        pre = f"{_P}.encoder.layer.{i}"
        for name in ("query", "key", "value"):
            want[f"{pre}.attention.self.{name}.weight"] = (H, H)
            want[f"{pre}.attention.self.{name}.bias"] = (H,)
        want.update({
            f"{pre}.attention.output.dense.weight": (H, H),
            f"{pre}.attention.output.dense.bias": (H,),
            f"{pre}.attention.LayerNorm.weight": (H,),
            f"{pre}.attention.LayerNorm.bias": (H,),
            f"{pre}.intermediate.LayerNorm.weight": (H,),
            f"{pre}.intermediate.LayerNorm.bias": (H,),
            f"{pre}.intermediate.dense.weight": (I, H),
            f"{pre}.intermediate.dense.bias": (I,),
            f"{pre}.output.dense.weight": (H, I),
            f"{pre}.output.dense.bias": (H,),
        })
    missing = [k for k in want if k not in sd]
    if "lm_head.decoder.bias" not in sd and "lm_head.bias" not in sd:
        missing.append("lm_head.decoder.bias")
    if missing:
        raise CheckpointError(
            f"the state dict lacks {len(missing)} tensor(s) of a RobertaPreLayerNormForMaskedLM with "
            f"{cfg.num_layers} layers, e.g. {missing[:3]}; check that it is that architecture and size."
        )
    for key, shape in want.items():
        got = tuple(np.shape(sd[key]))
        if shape is None:
            if len(got) != 2 or got[0] < 1 or got[1] != H:
                raise CheckpointError(f"{key} has shape {got}; expected (>=1, {H}).")
        elif got != shape:
            raise CheckpointError(
                f"{key} has shape {got} but the model config needs {shape}; the checkpoint was made "
                "for a different vocabulary/size (or max_position_embeddings)."
            )


def from_hf_state_dict(state_dict: Mapping[str, Any], cfg: RobertaConfig) -> dict:
    """HF state dict (numpy arrays or torch tensors) -> our masked-LM parameter tree (numpy).

    Segment (token type) row 0 is the only one RoBERTa uses; extra rows are dropped.
    """
    sd = {k: v for k, v in state_dict.items()}
    _expect_shapes(sd, cfg)
    H, N, D = cfg.hidden_size, cfg.num_heads, cfg.head_dim
    g = lambda key: _np(sd[key])  # noqa: E731

    def ln(prefix):
        return {"scale": g(f"{prefix}.weight"), "bias": g(f"{prefix}.bias")}

    def linear(prefix):
        return {"kernel": np.ascontiguousarray(g(f"{prefix}.weight").T), "bias": g(f"{prefix}.bias")}

    enc: dict = {
        "embeddings": {
            "word_embeddings": {"embedding": g(f"{_P}.embeddings.word_embeddings.weight")},
            "position_embeddings": {"embedding": g(f"{_P}.embeddings.position_embeddings.weight")},
            "token_type_embeddings": {"embedding": g(f"{_P}.embeddings.token_type_embeddings.weight")[:1]},
            "layer_norm": ln(f"{_P}.embeddings.LayerNorm"),
        },
        "final_norm": ln(f"{_P}.LayerNorm"),
    }
    for i in range(cfg.num_layers):
        pre = f"{_P}.encoder.layer.{i}"
        names = ("query", "key", "value")
        kernel = np.stack([g(f"{pre}.attention.self.{n}.weight").T.reshape(H, N, D) for n in names], axis=1)
        bias = np.stack([g(f"{pre}.attention.self.{n}.bias").reshape(N, D) for n in names], axis=0)
        enc[f"layers_{i}"] = {
            "attention": {
                "qkv": {"kernel": np.ascontiguousarray(kernel), "bias": bias},
                "out": {
                    "kernel": np.ascontiguousarray(g(f"{pre}.attention.output.dense.weight").T.reshape(N, D, H)),
                    "bias": g(f"{pre}.attention.output.dense.bias"),
                },
            },
            "attention_norm": ln(f"{pre}.attention.LayerNorm"),
            "mlp_norm": ln(f"{pre}.intermediate.LayerNorm"),
            "mlp": {
                "intermediate": linear(f"{pre}.intermediate.dense"),
                "output": linear(f"{pre}.output.dense"),
            },
        }
    decoder_bias = "lm_head.decoder.bias" if "lm_head.decoder.bias" in sd else "lm_head.bias"
    head = {
        "dense": linear("lm_head.dense"),
        "layer_norm": ln("lm_head.layer_norm"),
        "decoder": {"kernel": np.ascontiguousarray(g("lm_head.decoder.weight").T), "bias": g(decoder_bias)},
    }
    return {"encoder": enc, "mlm_head": head}


def hf_config_dict(cfg: RobertaConfig) -> dict:
    """The `config.json` of the equivalent `RobertaPreLayerNormForMaskedLM` (untied embeddings)."""
    return {
        "architectures": ["RobertaPreLayerNormForMaskedLM"],
        "model_type": "roberta-prelayernorm",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "intermediate_size": cfg.intermediate_size,
        "hidden_act": "gelu",
        "hidden_dropout_prob": cfg.dropout_rate,
        "attention_probs_dropout_prob": cfg.attention_dropout_rate,
        "max_position_embeddings": cfg.position_table_size,
        "type_vocab_size": 1,
        "initializer_range": cfg.initializer_range,
        "layer_norm_eps": cfg.layer_norm_eps,
        "position_embedding_type": "absolute",
        "pad_token_id": cfg.pad_token_id,
        "bos_token_id": BOS_ID,
        "eos_token_id": EOS_ID,
        "tie_word_embeddings": False,
        "is_decoder": False,
        "use_cache": True,
        "classifier_dropout": None,
        "dtype": "float32",
        # Ours only (Hugging Face keeps unknown keys): how the heads were built. A Hugging Face model
        # uses `layer_norm_eps` in its LM head, as the reference's saved models do.
        "head_layer_norm_eps": cfg.head_layer_norm_eps,
        "head_init": cfg.head_init,
    }


def config_from_hf_dict(hf: Mapping[str, Any], dtype: str = "float32") -> RobertaConfig:
    """The inverse of `hf_config_dict`, for loading an exported (or compatible) checkpoint."""
    if hf.get("model_type") != "roberta-prelayernorm":
        raise CheckpointError(
            f"config.json has model_type={hf.get('model_type')!r}; only 'roberta-prelayernorm' checkpoints "
            "can be loaded into this encoder."
        )
    pad = int(hf.get("pad_token_id", 1))
    return RobertaConfig(
        vocab_size=int(hf["vocab_size"]),
        hidden_size=int(hf["hidden_size"]),
        num_layers=int(hf["num_hidden_layers"]),
        num_heads=int(hf["num_attention_heads"]),
        intermediate_size=int(hf["intermediate_size"]),
        max_position_embeddings=int(hf["max_position_embeddings"]) - pad - 1,
        layer_norm_eps=float(hf.get("layer_norm_eps", 1e-12)),
        dropout_rate=float(hf.get("hidden_dropout_prob", 0.1)),
        attention_dropout_rate=float(hf.get("attention_probs_dropout_prob", 0.1)),
        initializer_range=float(hf.get("initializer_range", 0.02)),
        dtype=dtype,
        pad_token_id=pad,
        head_layer_norm_eps=hf.get("head_layer_norm_eps"),
        head_init=hf.get("head_init", "normal"),
    )
