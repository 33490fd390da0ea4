"""Optimizers: every group's learning rate against the reference's own schedulers, its AdamW, clipping."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ml_collections import ConfigDict

from climb_jax.config import schema
from climb_jax.curriculum import objectives
from climb_jax.train import optim

unit = schema.unit_config


def _trainer(total, warmup, lr=1e-3):
    t = schema.base_config().trainer
    t.total_steps, t.warmup_steps, t.lr = total, warmup, lr
    return t


def _units(**kw):
    return objectives.parse_units(ConfigDict(kw))


def _reference_lrs(units, total, warmup, lr):
    """Runs the reference's schedulers as its trainer does: the encoder's `get_linear_schedule_with_warmup`
    stepped every step; each unit's (warmup N // 10, N = int(T * (end - start))) stepped in the callback
    that sees k + 1, its optimizer moving only when the unit computed a loss. Returns {group: [lr at k]}."""
    torch = pytest.importorskip("torch")
    from transformers import get_linear_schedule_with_warmup

    def scheduler(peak, warm, n):
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=peak)
        return opt, get_linear_schedule_with_warmup(opt, num_warmup_steps=warm, num_training_steps=n)

    enc_opt, enc_sched = scheduler(lr, warmup, total)
    heads = {}
    for u in units:
        n = int(total * (u.end - u.start))
        heads[u.head] = (u, *scheduler(u.lr, n // 10, n))
    out = {"encoder": [], **{h: [] for h in heads}}
    has_grad = {h: False for h in heads}
    for k in range(total):
        out["encoder"].append(enc_opt.param_groups[0]["lr"])
        enc_opt.step()  # no gradient: moves nothing, keeps torch's step order
        enc_sched.step()
        for h, (u, opt, sched) in heads.items():
            if u.start <= k / total <= u.end:
                has_grad[h] = True
            applied = 0.0
            if u.start <= (k + 1) / total <= u.end:
                if has_grad[h]:
                    applied = opt.param_groups[0]["lr"]
                opt.step()
                sched.step()
                has_grad[h] = False
            out[h].append(applied)
    return out


@pytest.mark.parametrize("total, windows", [
    (200, dict(mlm=(0.0, 1.0))),
    (800, dict(mlm=(0.125, 1.0), nv=(0.0, 0.125))),
    (333, dict(mlm=(0.0, 1.0), nv=(0.0, 0.0625), all=(0.0625, 1.0))),
])
def test_learning_rates_equal_the_reference_schedulers(total, windows):
    units = _units(**{name: unit("mlm" if name == "mlm" else "pos", a, b, "" if name == "mlm" else "NOUN")
                      for name, (a, b) in windows.items()})
    t = _trainer(total, total // 4)
    lrs = optim.LearningRates.from_config(t, units)
    ref = _reference_lrs(units, total, total // 4, t.lr)
    at = jax.jit(lrs.at)
    got = {g: [] for g in ref}
    for k in range(total):
        for g, v in at(jnp.int32(k)).items():
            got[g].append(float(v))
    for g in ref:
        np.testing.assert_allclose(got[g], ref[g], rtol=1e-5, atol=1e-12, err_msg=g)


def test_paper_schedules_in_closed_form():
    """Vanilla: encoder warmup 100k, MLM head warmup 40k, both to 0 at 400k. A unit starting at 12.5 %
    (N = 350k, warmup 35k) enters one scheduler step ahead and reaches 0 on the last step."""
    total = 400_000
    t = _trainer(total, 100_000)
    vanilla = optim.LearningRates.from_config(t, _units(mlm=unit("mlm", 0.0, 1.0)))
    lr = lambda sched, k, g: float(sched.at(k)[g])
    assert lr(vanilla, 0, "mlm_head") == 0.0  # first step
    assert lr(vanilla, 40_000, "mlm_head") == pytest.approx(1e-3)  # warm-up end
    assert lr(vanilla, 399_999, "mlm_head") == pytest.approx(1e-3 / 360_000, rel=1e-4)  # last step
    assert lr(vanilla, 100_000, "encoder") == pytest.approx(1e-3)
    assert lr(vanilla, 399_999, "encoder") == pytest.approx(1e-3 / 300_000, rel=1e-4)
    late = optim.LearningRates.from_config(t, _units(mlm=unit("mlm", 0.125, 1.0),
                                                      nv=unit("pos", 0.0, 0.125, "NOUN,VERB")))
    assert lr(late, 49_999, "mlm_head") == 0.0
    assert lr(late, 50_000, "mlm_head") == pytest.approx(1e-3 / 35_000, rel=1e-4)  # first active step
    assert lr(late, 84_999, "mlm_head") == pytest.approx(1e-3)  # warm-up end
    assert lr(late, 399_999, "mlm_head") == 0.0  # last step: index N
    # The POS head: N = 50k, warmup 5k; its last update is at 49_999 (index 49_999), frozen at 50_000.
    assert lr(late, 5_000, "nv_head") == pytest.approx(1e-3)
    assert lr(late, 49_999, "nv_head") == pytest.approx(1e-3 / 45_000, rel=1e-3)
    assert lr(late, 50_000, "nv_head") == 0.0


def _legacy_adamw(grads, lr, b1=0.9, b2=0.999, eps=1e-6):
    """transformers.AdamW (the reference's heads and `adamw_hf`), written out for one parameter."""
    p, m, v = 0.0, 0.0, 0.0
    out = []
    for t, (g, a) in enumerate(zip(grads, lr), start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        p = p - a * np.sqrt(1 - b2 ** t) / (1 - b1 ** t) * m / (np.sqrt(v) + eps)
        out.append(p)
    return np.array(out)


def test_adamw_is_the_references_and_a_frozen_head_keeps_its_state():
    t = _trainer(100, 10)
    units = _units(mlm=unit("mlm", 0.0, 1.0))
    txs = optim.make_optimizers(t, units)
    params = {"encoder": {"w": jnp.zeros((1,))}, "mlm_head": {"w": jnp.zeros((1,))}}
    state = optim.init_opt_state(txs, params)
    grads_seq = [3e-6, -1e-6, 2e-6, 5e-7]
    lrs = [0.1, 0.2, 0.3, 0.4]
    got = []
    for g, a in zip(grads_seq, lrs):
        grads = {"encoder": {"w": jnp.full((1,), g)}, "mlm_head": {"w": jnp.full((1,), g)}}
        params, state = optim.apply_updates(txs, state, params, grads, {"encoder": a, "mlm_head": a},
                                            {"mlm_head": jnp.bool_(True)})
        got.append((float(params["encoder"]["w"][0]), float(params["mlm_head"]["w"][0])))
    got = np.array(got)
    # Gradients near eps show where eps sits: the encoder's 1e-8, the heads' 1e-6.
    np.testing.assert_allclose(got[:, 0], _legacy_adamw(grads_seq, lrs, eps=1e-8), rtol=1e-5)
    np.testing.assert_allclose(got[:, 1], _legacy_adamw(grads_seq, lrs, eps=1e-6), rtol=1e-5)
    assert not np.allclose(got[:, 1], _legacy_adamw(grads_seq, lrs, eps=1e-8), rtol=1e-3)
    frozen_params, frozen_state = optim.apply_updates(
        txs, state, params, {"encoder": {"w": jnp.ones((1,))}, "mlm_head": {"w": jnp.ones((1,))}},
        {"encoder": 0.1, "mlm_head": 0.1}, {"mlm_head": jnp.bool_(False)})
    assert jax.tree_util.tree_all(jax.tree_util.tree_map(
        lambda a, b: bool((a == b).all()), (frozen_params["mlm_head"], frozen_state["mlm_head"]),
        (params["mlm_head"], state["mlm_head"])))
    assert float(frozen_params["encoder"]["w"][0]) != float(params["encoder"]["w"][0])


def test_clipping_scales_the_encoder_only():
    grads = {"encoder": {"a": jnp.full((4,), 3.0), "b": jnp.full((2, 2), 4.0)},
             "mlm_head": {"k": jnp.full((3,), 100.0)}, "nv_head": {"k": jnp.full((2,), -50.0)}}
    norm = float(np.sqrt(4 * 9 + 4 * 16))  # 10
    out = optim.clip_encoder(grads, 1.0)
    assert float(out.encoder_norm) == pytest.approx(norm)
    assert float(optax_norm(out.grads["encoder"])) == pytest.approx(1.0, rel=1e-5)
    for head in ("mlm_head", "nv_head"):  # never clipped, however large
        np.testing.assert_array_equal(np.asarray(out.grads[head]["k"]), np.asarray(grads[head]["k"]))
    small = optim.clip_encoder(jax.tree_util.tree_map(lambda g: g / 100, grads), 1.0)
    np.testing.assert_allclose(np.asarray(small.grads["encoder"]["a"]), 0.03, rtol=1e-6)  # under the norm
    off = optim.clip_encoder(grads, 0.0)
    np.testing.assert_array_equal(np.asarray(off.grads["encoder"]["a"]), 3.0)


def optax_norm(tree):
    import optax

    return optax.global_norm(tree)
