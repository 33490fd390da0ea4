"""The encoder against Hugging Face's PyTorch RobertaPreLayerNorm: logits, gradients, conversion."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from climb_jax.config import schema
from climb_jax.errors import CheckpointError, ConfigError
from climb_jax.models import hf_convert
from climb_jax.models.ops import Dropout, keep_mask
from climb_jax.models.roberta import (ClassificationHead, LMHead, RobertaConfig, RobertaEncoder, RobertaForMaskedLM,
                                      init_params, param_count, position_ids)

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

CFG = RobertaConfig(vocab_size=300, hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128,
                    max_position_embeddings=32, dropout_rate=0.1, attention_dropout_rate=0.1)


def _perturbed(params, seed=1, scale=0.1):
    """Random values in every leaf (layer-norm scales and biases too), so a mix-up shows."""
    rs = np.random.RandomState(seed)
    return jax.tree_util.tree_map(
        lambda x: (np.asarray(x) + scale * rs.normal(size=x.shape)).astype(np.float32), params)


@pytest.fixture(scope="module")
def fresh_params():
    return init_params(jax.random.key(3), CFG)


@pytest.fixture(scope="module")
def params(fresh_params):
    return _perturbed(fresh_params)


@jax.jit
def _mlm(params, ids, mask):
    return RobertaForMaskedLM(CFG).apply({"params": params}, ids, mask)


@pytest.fixture(scope="module")
def hf_model(params):
    config = transformers.RobertaPreLayerNormConfig(**hf_convert.hf_config_dict(CFG))
    model = transformers.RobertaPreLayerNormForMaskedLM(config).eval()
    state = {k: torch.from_numpy(v) for k, v in hf_convert.to_hf_state_dict(params, CFG).items()}
    model.load_state_dict(state, strict=True)
    return model


@pytest.fixture(scope="module")
def batch():
    """Three rows of different lengths, right-padded with <pad> (id 1)."""
    rs = np.random.RandomState(0)
    ids = rs.randint(5, CFG.vocab_size, (3, 20)).astype(np.int32)
    ids[:, 0] = 0
    for row, length in enumerate((20, 14, 9)):
        ids[row, length - 1] = 2
        ids[row, length:] = 1
    return ids, (ids != 1).astype(np.int32)


def _hf_logits(model, ids, mask):
    with torch.no_grad():
        return model(input_ids=torch.from_numpy(ids).long(), attention_mask=torch.from_numpy(mask)).logits.numpy()


def test_logits_match_hugging_face(params, hf_model, batch):
    ids, mask = batch
    ref = _hf_logits(hf_model, ids, mask)
    ours = np.asarray(_mlm(params, ids, mask))
    assert ours.shape == (3, 20, CFG.vocab_size) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=1e-4)


def test_gradients_match_hugging_face(params, hf_model, batch):
    """A loss on gathered positions: parameter gradients equal torch autograd's (converted)."""
    ids, mask = batch
    positions = np.array([[1, 5, 7], [2, 3, 12], [1, 4, 6]], np.int32)
    weights = np.random.RandomState(1).normal(size=(3, 3, CFG.vocab_size)).astype(np.float32)

    def loss(p):
        logits = RobertaForMaskedLM(CFG).apply({"params": p}, ids, mask, target_positions=positions)
        return jnp.sum(jnp.tanh(logits) * weights)

    grads = hf_convert.to_hf_state_dict(jax.jit(jax.grad(loss))(params), CFG)
    hf_model.zero_grad()
    logits = hf_model(input_ids=torch.from_numpy(ids).long(), attention_mask=torch.from_numpy(mask)).logits
    gathered = torch.take_along_dim(logits, torch.from_numpy(positions).long()[..., None], dim=1)
    (torch.tanh(gathered) * torch.from_numpy(weights)).sum().backward()
    for name, p in hf_model.named_parameters():
        if name == "lm_head.bias":  # HF's unused copy of the decoder bias (untied): no gradient
            assert p.grad is None or not p.grad.any()
            continue
        np.testing.assert_allclose(grads[name], p.grad.numpy(), atol=2e-4, rtol=1e-3, err_msg=name)


def test_conversion_round_trips_exactly(params, hf_model):
    sd = hf_convert.to_hf_state_dict(params, CFG)
    back = hf_convert.from_hf_state_dict(sd, CFG)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), b), params, back)
    # The other direction, from torch tensors of a freshly initialised HF model.
    fresh = transformers.RobertaPreLayerNormForMaskedLM(hf_model.config).state_dict()
    again = hf_convert.to_hf_state_dict(hf_convert.from_hf_state_dict(fresh, CFG), CFG)
    assert set(again) == set(fresh)
    for key, value in fresh.items():
        expected = fresh["lm_head.decoder.bias"] if key == "lm_head.bias" else value
        np.testing.assert_array_equal(again[key], expected.numpy(), err_msg=key)


def test_param_count_equals_hugging_face(params, hf_model):
    hf_count = sum(p.numel() for p in hf_model.parameters())
    # HF also holds `lm_head.bias`, an unused duplicate of the decoder bias when untied.
    assert param_count(params) == hf_count - CFG.vocab_size
    assert param_count(params) == sum(v.size for k, v in hf_convert.to_hf_state_dict(params, CFG).items()
                                      if k != "lm_head.bias")


def test_target_positions_equal_gathered_full_logits(params, batch):
    ids, mask = batch
    full = _mlm(params, ids, mask)
    positions = np.array([[0, 3, 19], [13, 2, 2], [8, 1, 0]], np.int32)
    part = RobertaForMaskedLM(CFG).apply({"params": params}, ids, mask, target_positions=positions)
    assert part.shape == (3, 3, CFG.vocab_size)
    np.testing.assert_allclose(part, np.take_along_axis(np.asarray(full), positions[..., None], 1), atol=1e-5)


def test_padding_does_not_change_real_positions(params, batch):
    ids, mask = batch
    encoder = RobertaEncoder(CFG)
    padded = np.asarray(encoder.apply({"params": params["encoder"]}, ids, mask))
    alone = np.asarray(encoder.apply({"params": params["encoder"]}, ids[2:, :9]))  # row 2 has 9 real tokens
    np.testing.assert_allclose(padded[2, :9], alone[0], atol=1e-5)
    # Without the attention mask the pad keys are attended to, and the outputs change.
    unmasked = np.asarray(encoder.apply({"params": params["encoder"]}, ids))
    assert np.abs(unmasked[2, :9] - alone[0]).max() > 1e-3


def test_position_ids_are_padding_aware(params):
    ids = jnp.array([[0, 7, 8, 2, 1, 1]])
    np.testing.assert_array_equal(position_ids(ids), [[2, 3, 4, 5, 1, 1]])
    too_long = jnp.zeros((1, CFG.max_position_embeddings + 1), jnp.int32)
    with pytest.raises(ValueError, match="max_position_embeddings=32"):
        jax.eval_shape(lambda p: RobertaEncoder(CFG).apply({"params": p}, too_long), params["encoder"])


def test_bfloat16_runs_and_stays_close(params, batch):
    ids, mask = batch
    f32 = np.asarray(_mlm(params, ids, mask))
    bf16_cfg = dataclasses.replace(CFG, dtype="bfloat16")
    bf16 = RobertaForMaskedLM(bf16_cfg).apply({"params": params}, ids, mask)
    assert bf16.dtype == jnp.float32  # logits come back float32
    err = np.abs(np.asarray(bf16) - f32).max()
    assert 0 < err < 0.05 * np.abs(f32).max(), err
    assert (np.asarray(bf16).argmax(-1) == f32.argmax(-1)).mean() > 0.9
    # Parameters stay float32 when initialised under bf16.
    shapes = jax.eval_shape(lambda key: init_params(key, bf16_cfg), jax.random.key(0))
    assert {x.dtype for x in jax.tree_util.tree_leaves(shapes)} == {jnp.dtype(jnp.float32)}


def test_dropout_is_active_only_when_not_deterministic(params, batch):
    ids, mask = batch
    base = _mlm(params, ids, mask)
    train = jax.jit(lambda p, key: RobertaForMaskedLM(CFG).apply({"params": p}, ids, mask, deterministic=False,
                                                                 rngs={"dropout": key}))
    a, b, c = (train(params, jax.random.key(k)) for k in (1, 1, 2))
    np.testing.assert_array_equal(a, b)
    assert np.abs(np.asarray(a) - np.asarray(base)).max() > 1e-3
    assert np.abs(np.asarray(a) - np.asarray(c)).max() > 1e-3


def test_initialisation_follows_hugging_face(fresh_params):
    p = fresh_params
    emb = p["encoder"]["embeddings"]
    assert abs(float(jnp.std(emb["word_embeddings"]["embedding"][5:])) - 0.02) < 0.002
    assert not np.asarray(emb["word_embeddings"]["embedding"][CFG.pad_token_id]).any()
    assert not np.asarray(emb["position_embeddings"]["embedding"][CFG.pad_token_id]).any()
    assert emb["position_embeddings"]["embedding"].shape == (CFG.max_position_embeddings + 2, CFG.hidden_size)
    layer = p["encoder"]["layers_0"]
    assert abs(float(jnp.std(layer["mlp"]["intermediate"]["kernel"])) - 0.02) < 0.002
    for path, leaf in jax.tree_util.tree_leaves_with_path(p):
        name = path[-1].key
        assert name in ("kernel", "bias", "scale", "embedding"), path
        if name == "bias":
            assert not np.asarray(leaf).any(), path
        if name == "scale":
            np.testing.assert_array_equal(leaf, 1.0)


def test_lm_head_and_classification_head_match_hugging_face(params):
    from transformers.models.roberta_prelayernorm import modeling_roberta_prelayernorm as m

    hidden = np.random.RandomState(2).normal(size=(2, 5, CFG.hidden_size)).astype(np.float32)
    pos_head = LMHead(CFG, num_outputs=12)
    pos_params = pos_head.init(jax.random.key(4), hidden)["params"]
    assert pos_head.apply({"params": pos_params}, hidden).shape == (2, 5, 12)

    config = transformers.RobertaPreLayerNormConfig(**hf_convert.hf_config_dict(CFG), num_labels=3)
    head = ClassificationHead(CFG, num_classes=3)
    hp = _perturbed(head.init(jax.random.key(5), hidden)["params"], seed=6)
    ref = m.RobertaPreLayerNormClassificationHead(config).eval()
    for name in ("dense", "out_proj"):
        getattr(ref, name).weight.data = torch.from_numpy(np.asarray(hp[name]["kernel"]).T.copy())
        getattr(ref, name).bias.data = torch.from_numpy(np.asarray(hp[name]["bias"]).copy())
    with torch.no_grad():
        expected = ref(torch.from_numpy(hidden)).numpy()
    np.testing.assert_allclose(head.apply({"params": hp}, hidden), expected, atol=1e-5)
    dropped = head.apply({"params": hp}, hidden, deterministic=False, rngs={"dropout": jax.random.key(0)})
    assert np.abs(np.asarray(dropped) - expected).max() > 1e-4


def test_config_from_run_config_and_validation():
    c = schema.base_config()
    cfg = RobertaConfig.from_config(c.model, vocab_size=8192)
    assert (cfg.num_layers, cfg.hidden_size, cfg.num_heads, cfg.intermediate_size) == (8, 256, 8, 2048)
    assert cfg.max_position_embeddings == 512 and cfg.position_table_size == 514 and cfg.dtype == "float32"
    hash(cfg)  # usable as a static jit argument
    with pytest.raises(ConfigError, match="not divisible"):
        dataclasses.replace(cfg, num_heads=7)
    with pytest.raises(ConfigError, match="dtype"):
        dataclasses.replace(cfg, dtype="float16")
    back = hf_convert.config_from_hf_dict(hf_convert.hf_config_dict(cfg))
    assert back == cfg


def test_bad_state_dicts_are_rejected_with_clear_errors(params):
    sd = hf_convert.to_hf_state_dict(params, CFG)
    with pytest.raises(CheckpointError, match="lacks"):
        hf_convert.from_hf_state_dict({k: v for k, v in sd.items() if "layer.1." not in k}, CFG)
    wrong = dataclasses.replace(CFG, vocab_size=400)
    with pytest.raises(CheckpointError, match="different vocabulary"):
        hf_convert.from_hf_state_dict(sd, wrong)
    with pytest.raises(CheckpointError, match="model_type"):
        hf_convert.config_from_hf_dict({"model_type": "bert"})


def test_dropout_mask_is_uniform_and_independent_across_keys():
    shape = (64, 8, 32, 32)
    a = np.asarray(keep_mask(jax.random.key(0), shape, 0.1))
    b = np.asarray(keep_mask(jax.random.key(1), shape, 0.1))
    n = a.size
    assert abs(a.mean() - 0.9) < 4 * np.sqrt(0.09 / n)
    # Independent draws agree with probability p^2 + (1-p)^2; neighbours are uncorrelated.
    assert abs((a == b).mean() - 0.82) < 4 * np.sqrt(0.82 * 0.18 / n)
    flat = a.reshape(-1).astype(np.float64)
    assert abs(np.corrcoef(flat[:-1], flat[1:])[0, 1]) < 0.01
    assert abs(np.corrcoef(a[:, :, 0].reshape(-1), a[:, :, 1].reshape(-1))[0, 1]) < 0.02
    np.testing.assert_array_equal(a, keep_mask(jax.random.key(0), shape, 0.1))
    # Raw uint32 keys and 4-word rbg keys work too.
    assert abs(np.asarray(keep_mask(jax.random.PRNGKey(5), shape, 0.5)).mean() - 0.5) < 0.01
    assert abs(np.asarray(keep_mask(jax.random.key(5, impl="rbg"), shape, 0.25)).mean() - 0.75) < 0.01
    x = jnp.ones((4096, 64))
    out = Dropout(0.2).apply({}, x, deterministic=False, rngs={"dropout": jax.random.key(2)})
    assert set(np.unique(np.asarray(out))) == {0.0, 1.25}
    assert abs(float(out.mean()) - 1.0) < 0.01


def test_task_heads_are_built_as_the_reference_builds_them():
    """The reference's heads are `RobertaPreLayerNormLMHead(RobertaConfig(vocab_size, hidden_size))`: plain
    torch modules (PyTorch's default Linear init, decoder bias zero) with layer-norm eps 1e-12."""
    run_cfg = RobertaConfig.from_config(schema.base_config().model, vocab_size=300)
    assert (run_cfg.head_init, run_cfg.head_layer_norm_eps) == ("torch", 1e-12)
    assert run_cfg.layer_norm_eps == 1e-5  # the encoder's, from the reference's model config
    cfg = dataclasses.replace(CFG, hidden_size=256, num_heads=4, head_init="torch", head_layer_norm_eps=1e-12)
    p = LMHead(cfg, num_outputs=2000).init(jax.random.key(0), jnp.zeros((1, 1, 256)))["params"]
    ref = transformers.models.roberta_prelayernorm.modeling_roberta_prelayernorm.RobertaPreLayerNormLMHead(
        transformers.RobertaConfig(vocab_size=2000, hidden_size=256))
    assert ref.layer_norm.eps == 1e-12
    pairs = [(p["dense"]["kernel"], ref.dense.weight), (p["dense"]["bias"], ref.dense.bias),
             (p["decoder"]["kernel"], ref.decoder.weight)]
    for ours, theirs in pairs:  # same uniform law U(-b, b), b = 1/sqrt(fan_in): bounds and std b/sqrt(3)
        ours, theirs = np.asarray(ours), theirs.detach().numpy()
        bound = 256 ** -0.5
        # The sample std of n uniform draws has relative standard error sqrt(0.2 / n) (kurtosis 1.8): five
        # of them is a bound that a correct draw does not cross, whatever the seed.
        tolerance = 5 * (0.2 / ours.size) ** 0.5
        for x in (ours, theirs):
            assert np.abs(x).max() <= bound and np.abs(x).max() > 0.95 * bound
            assert x.std() == pytest.approx(bound / 3 ** 0.5, rel=tolerance)
    assert not np.asarray(p["decoder"]["bias"]).any() and not ref.bias.detach().numpy().any()
    # The eps is the head's own: a row of equal activations is where 1e-12 and 1e-5 differ.
    x = jnp.full((1, 1, 256), 0.3)
    same_eps = LMHead(dataclasses.replace(cfg, head_layer_norm_eps=1e-5), 2000).apply({"params": p}, x)
    assert not np.allclose(np.asarray(LMHead(cfg, 2000).apply({"params": p}, x)), np.asarray(same_eps))
