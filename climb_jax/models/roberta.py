"""RoBERTa with pre-layer-norm blocks, in Flax linen, numerically equal to Hugging Face's
`RobertaPreLayerNormForMaskedLM` (untied input and output embeddings).

The architecture, as Hugging Face computes it:

    h = LN_emb(word[ids] + position[pos_ids] + token_type[0])          # embeddings, then dropout
    for each layer:
        h = h + Dropout(Out(Attention(LN_attn(h))))                    # pre-LN self-attention
        h = h + Dropout(W_out(GELU(W_in(LN_mlp(h)))))                  # pre-LN feed-forward
    hidden = LN_final(h)

Position ids are padding-aware as in fairseq/HF: the i-th non-pad token gets `pad_token_id + i`
(so the table has `max_position_embeddings + 2` rows) and pad tokens get `pad_token_id`.

Layout choices, for speed and for sharding rules that match parameter paths:
  * Q, K and V come from one fused projection with kernel `[H, 3, heads, head_dim]`: one large
    matmul instead of three; its head axis is explicit so a `model` mesh axis can split heads.
    The output projection has kernel `[heads, head_dim, H]`. `hf_convert` maps both to HF's
    separate `query`/`key`/`value`/`output.dense` Linear layers.
  * Attention is two einsums on the `[batch, seq, heads, head_dim]` activations (no reshapes
    or transposes in the model code: XLA chooses the layouts); the softmax runs in float32.
  * Dropout masks come from a counter-based hash, not threefry, and GELU is written with `erf`:
    both were large, avoidable costs of a CPU training step (`ops`).
  * `RobertaForMaskedLM` gathers the hidden states at `target_positions` before the MLM head,
    so the vocabulary projection (the largest matmul of a small model) runs only where a loss
    is taken.
With `dtype="bfloat16"` matmuls take bfloat16 inputs; parameters, layer norms, softmax, the
residual stream and the returned logits stay float32.
"""

from __future__ import annotations

import dataclasses
import numbers
from dataclasses import dataclass
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import flax.linen as nn

from climb_jax.config import choices
from climb_jax.constants import PAD_ID
from climb_jax.errors import ConfigError
from climb_jax.models.ops import Dropout, gelu

Array = jax.Array
_DTYPES = {name: jnp.dtype(name) for name in choices.DTYPES}
_HEAD_INITS = choices.HEAD_INITS


@dataclass(frozen=True)
class RobertaConfig:
    """Shape and regularisation of the encoder; hashable so it can be a static jit argument.

    `max_position_embeddings` counts usable token positions (512 as in RoBERTa); the position
    table has two more rows because padding-aware ids start at `pad_token_id + 1`.
    """

    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    max_position_embeddings: int = 512
    layer_norm_eps: float = 1e-5
    dropout_rate: float = 0.1
    attention_dropout_rate: float = 0.1
    initializer_range: float = 0.02
    dtype: str = "float32"
    pad_token_id: int = PAD_ID
    # The LM-shaped heads (MLM and the POS units): layer-norm eps (None = `layer_norm_eps`, as in a
    # Hugging Face checkpoint) and initialisation ("normal": normal(initializer_range) kernels and zero
    # biases like the encoder; "torch": PyTorch's default Linear init with a zero decoder bias, as the
    # reference's heads, which are plain torch modules built from a default RobertaConfig, eps 1e-12).
    head_layer_norm_eps: float | None = None
    head_init: str = "normal"

    def __post_init__(self) -> None:
        # Normalise numpy scalars so that equal configs hash equally (static jit arguments).
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.type == "int" and isinstance(value, numbers.Integral) and not isinstance(value, bool):
                object.__setattr__(self, f.name, int(value))
            elif f.type in ("float", "float | None") and isinstance(value, numbers.Real) and not isinstance(value, bool):
                object.__setattr__(self, f.name, float(value))
        self.validate()

    def validate(self) -> None:
        """Raises `ConfigError` for shapes the encoder cannot be built with."""
        for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size",
                     "max_position_embeddings"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"model {name} must be a positive integer, got {value!r}.")
        if self.hidden_size % self.num_heads:
            raise ConfigError(
                f"model hidden_size={self.hidden_size} is not divisible by num_heads={self.num_heads}; "
                "choose a width that is a multiple of the head count."
            )
        if self.dtype not in _DTYPES:
            raise ConfigError(f"model dtype='{self.dtype}' is not supported; choose one of: {', '.join(_DTYPES)}.")
        for name in ("dropout_rate", "attention_dropout_rate"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"model {name} must lie in [0, 1), got {getattr(self, name)}.")
        if self.head_init not in _HEAD_INITS:
            raise ConfigError(f"model head_init='{self.head_init}' is not supported; choose one of: "
                              f"{', '.join(_HEAD_INITS)}.")
        if self.head_layer_norm_eps is not None and not self.head_layer_norm_eps > 0:
            raise ConfigError(f"model head_layer_norm_eps must be positive, got {self.head_layer_norm_eps}.")
        if not 0 <= self.pad_token_id < self.vocab_size:
            raise ConfigError(f"pad_token_id={self.pad_token_id} is outside the vocabulary of {self.vocab_size}.")

    @classmethod
    def from_config(cls, model_cfg: Mapping[str, Any], vocab_size: int) -> "RobertaConfig":
        """Builds the config from the `model` section of a run config (`schema.base_config`)."""
        fields = {f.name for f in dataclasses.fields(cls)} - {"vocab_size", "pad_token_id"}
        kwargs = {name: model_cfg[name] for name in fields if name in model_cfg}
        for name in ("num_layers", "hidden_size", "num_heads", "intermediate_size"):
            if name not in kwargs:
                raise ConfigError(f"the model config has no '{name}'; start from schema.base_config().")
        for name in ("layer_norm_eps", "dropout_rate", "attention_dropout_rate", "initializer_range",
                     "head_layer_norm_eps"):
            if kwargs.get(name) is not None:
                kwargs[name] = float(kwargs[name])
        return cls(vocab_size=int(vocab_size), **kwargs)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def position_table_size(self) -> int:
        """Rows of the position table: positions start at pad_token_id + 1 (HF/fairseq)."""
        return self.max_position_embeddings + self.pad_token_id + 1

    @property
    def compute_dtype(self):
        return _DTYPES[self.dtype]


def _init(cfg: RobertaConfig):
    return nn.initializers.normal(stddev=cfg.initializer_range)


def _embedding_init(cfg: RobertaConfig):
    """normal(initializer_range) with the pad row zeroed, as torch's `padding_idx` embeddings."""
    base = _init(cfg)

    def init(key, shape, dtype=jnp.float32):
        return base(key, shape, dtype).at[cfg.pad_token_id].set(0)

    return init


def _layer_norm(cfg: RobertaConfig, name: str) -> nn.LayerNorm:
    # Always float32: statistics of bf16 activations lose too much precision.
    return nn.LayerNorm(epsilon=cfg.layer_norm_eps, dtype=jnp.float32, name=name)


def _dense(cfg: RobertaConfig, features: int, name: str) -> nn.Dense:
    return nn.Dense(features, dtype=cfg.compute_dtype, kernel_init=_init(cfg), name=name)


def position_ids(input_ids: Array, pad_token_id: int = PAD_ID) -> Array:
    """HF/fairseq position ids: non-pad tokens count from pad_token_id + 1, pads get pad_token_id."""
    mask = (input_ids != pad_token_id).astype(jnp.int32)
    return jnp.cumsum(mask, axis=1) * mask + pad_token_id


class Embeddings(nn.Module):
    config: RobertaConfig

    @nn.compact
    def __call__(self, input_ids: Array, *, deterministic: bool) -> Array:
        cfg = self.config
        if input_ids.ndim != 2 or input_ids.shape[1] > cfg.max_position_embeddings:
            raise ValueError(
                f"input_ids must be [batch, length] with length <= max_position_embeddings="
                f"{cfg.max_position_embeddings}; got shape {input_ids.shape}."
            )
        word = nn.Embed(cfg.vocab_size, cfg.hidden_size, embedding_init=_embedding_init(cfg),
                        name="word_embeddings")
        pos = nn.Embed(cfg.position_table_size, cfg.hidden_size, embedding_init=_embedding_init(cfg),
                       name="position_embeddings")
        # One segment type only (RoBERTa): its single row is added to every position.
        token_type = nn.Embed(1, cfg.hidden_size, embedding_init=_init(cfg), name="token_type_embeddings")
        h = word(input_ids) + pos(position_ids(input_ids, cfg.pad_token_id))
        h = h + token_type(jnp.zeros((1,), jnp.int32))
        h = _layer_norm(cfg, "layer_norm")(h)
        return Dropout(cfg.dropout_rate)(h, deterministic=deterministic)


class SelfAttention(nn.Module):
    """Multi-head self-attention with a fused QKV projection; padded keys are masked out."""

    config: RobertaConfig

    @nn.compact
    def __call__(self, x: Array, mask: Array | None, *, deterministic: bool) -> Array:
        cfg = self.config
        dtype = cfg.compute_dtype
        qkv = nn.DenseGeneral((3, cfg.num_heads, cfg.head_dim), dtype=dtype, kernel_init=_init(cfg),
                              name="qkv")(x)  # [B, L, 3, N, D]
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        q = q * jnp.asarray(cfg.head_dim ** -0.5, dtype)
        scores = jnp.einsum("bqnd,bknd->bnqk", q, k, preferred_element_type=jnp.float32)
        if mask is not None:
            scores = jnp.where(mask[:, None, None, :], scores, jnp.finfo(jnp.float32).min)
        probs = jax.nn.softmax(scores, axis=-1)
        probs = Dropout(cfg.attention_dropout_rate)(probs, deterministic=deterministic)
        ctx = jnp.einsum("bnqk,bknd->bqnd", probs.astype(dtype), v)
        return nn.DenseGeneral(cfg.hidden_size, axis=(-2, -1), dtype=dtype, kernel_init=_init(cfg),
                               name="out")(ctx)


class MLP(nn.Module):
    config: RobertaConfig

    @nn.compact
    def __call__(self, x: Array) -> Array:
        cfg = self.config
        h = gelu(_dense(cfg, cfg.intermediate_size, "intermediate")(x))
        return _dense(cfg, cfg.hidden_size, "output")(h)


class Layer(nn.Module):
    """One pre-LN block. The residual stream stays float32 whatever the compute dtype."""

    config: RobertaConfig

    @nn.compact
    def __call__(self, h: Array, mask: Array | None, *, deterministic: bool) -> Array:
        cfg = self.config
        drop = Dropout(cfg.dropout_rate)
        a = _layer_norm(cfg, "attention_norm")(h).astype(cfg.compute_dtype)
        a = SelfAttention(cfg, name="attention")(a, mask, deterministic=deterministic)
        h = h + drop(a, deterministic=deterministic).astype(h.dtype)
        m = _layer_norm(cfg, "mlp_norm")(h).astype(cfg.compute_dtype)
        m = MLP(cfg, name="mlp")(m)
        return h + drop(m, deterministic=deterministic).astype(h.dtype)


class RobertaEncoder(nn.Module):
    """Embeddings, `num_layers` pre-LN blocks and the final layer norm.

    `attention_mask` (1/True = attend) masks padded keys; `None` means every position is a real
    token, as in Hugging Face (training rows are full, so no mask is built for them).
    Returns float32 hidden states `[B, L, H]`.
    """

    config: RobertaConfig

    @nn.compact
    def __call__(self, input_ids: Array, attention_mask: Array | None = None, *,
                 deterministic: bool = True) -> Array:
        cfg = self.config
        mask = None if attention_mask is None else attention_mask.astype(jnp.bool_)
        h = Embeddings(cfg, name="embeddings")(input_ids, deterministic=deterministic)
        for i in range(cfg.num_layers):
            h = Layer(cfg, name=f"layers_{i}")(h, mask, deterministic=deterministic)
        return _layer_norm(cfg, "final_norm")(h)


def _torch_linear_bias_init(fan_in: int):
    """PyTorch's default Linear bias: uniform in +-1/sqrt(fan_in)."""
    bound = fan_in ** -0.5

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


class LMHead(nn.Module):
    """HF's RobertaLMHead: dense H->H, exact GELU, layer norm, decoder with bias. Logits float32.

    `config.head_init="torch"` initialises it as the reference's task heads are (plain torch modules,
    never passed through `_init_weights`): kernels and the dense bias uniform in +-1/sqrt(fan_in)
    (kaiming-uniform with a = sqrt(5)), the decoder bias zero."""

    config: RobertaConfig
    num_outputs: int

    @nn.compact
    def __call__(self, hidden: Array) -> Array:
        cfg = self.config
        dtype = cfg.compute_dtype
        if cfg.head_init == "torch":
            kernel = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")
            dense = nn.Dense(cfg.hidden_size, dtype=dtype, kernel_init=kernel,
                             bias_init=_torch_linear_bias_init(cfg.hidden_size), name="dense")
            decoder = nn.Dense(self.num_outputs, dtype=dtype, kernel_init=kernel, name="decoder")
        else:
            dense = _dense(cfg, cfg.hidden_size, "dense")
            decoder = _dense(cfg, self.num_outputs, "decoder")
        eps = cfg.layer_norm_eps if cfg.head_layer_norm_eps is None else cfg.head_layer_norm_eps
        x = gelu(dense(hidden.astype(dtype)))
        x = nn.LayerNorm(epsilon=eps, dtype=jnp.float32, name="layer_norm")(x).astype(dtype)
        return decoder(x).astype(jnp.float32)


class ClassificationHead(nn.Module):
    """HF's RobertaClassificationHead on the first (<s>) token. Logits float32."""

    config: RobertaConfig
    num_classes: int

    @nn.compact
    def __call__(self, hidden: Array, *, deterministic: bool = True) -> Array:
        cfg = self.config
        drop = Dropout(cfg.dropout_rate)
        x = drop(hidden[:, 0].astype(cfg.compute_dtype), deterministic=deterministic)
        x = jnp.tanh(_dense(cfg, cfg.hidden_size, "dense")(x))
        x = drop(x, deterministic=deterministic)
        return _dense(cfg, self.num_classes, "out_proj")(x).astype(jnp.float32)


def gather_positions(hidden: Array, positions: Array) -> Array:
    """`hidden[b, positions[b, k]]` -> [B, K, H]."""
    return jnp.take_along_axis(hidden, positions[..., None].astype(jnp.int32), axis=1)


class RobertaForMaskedLM(nn.Module):
    """Encoder plus MLM head; with `target_positions` [B, K] only those positions are projected
    to the vocabulary (returns [B, K, V]), otherwise every position ([B, L, V])."""

    config: RobertaConfig

    def setup(self) -> None:
        self.encoder = RobertaEncoder(self.config)
        self.mlm_head = LMHead(self.config, self.config.vocab_size)

    def __call__(self, input_ids: Array, attention_mask: Array | None = None, *,
                 deterministic: bool = True, target_positions: Array | None = None) -> Array:
        hidden = self.encoder(input_ids, attention_mask, deterministic=deterministic)
        if target_positions is not None:
            hidden = gather_positions(hidden, target_positions)
        return self.mlm_head(hidden)


def init_params(rng: Array, cfg: RobertaConfig) -> dict:
    """Fresh `RobertaForMaskedLM` parameters: normal(initializer_range) kernels and embeddings,
    zero biases, unit layer-norm scales and zeroed pad rows of the embedding tables, as HF's
    `_init_weights`."""
    model = RobertaForMaskedLM(cfg)
    dummy = jnp.zeros((1, 8), jnp.int32)
    return jax.jit(model.init)(rng, dummy)["params"]


def param_count(params: Any) -> int:
    """Number of scalars in a parameter tree."""
    return int(sum(x.size for x in jax.tree_util.tree_leaves(params)))
