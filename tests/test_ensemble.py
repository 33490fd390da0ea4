"""An ensemble (several runs, one vmapped step) against its members trained alone: same losses and
parameters, exact resume, one sick member stopped while the others finish, members read as ordinary runs."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from climb_jax.errors import ConfigError
from climb_jax.train.ensemble import EnsembleTrainer
from climb_jax.train.ensemble_members import Member, expand
from tests.helpers import load_config, params_equal, read_metrics, tiny_config, train

STEPS = 40


def _members(cache):
    """A vanilla member and a vocabulary-curriculum member: the step applies the allowed-vocabulary
    table to both (an all-True table for the vanilla one)."""
    vanilla = tiny_config(cache, trainer=dict(total_steps=STEPS))
    vocab = tiny_config(cache, "vocab_cl", "smoke,token_ids", trainer=dict(total_steps=STEPS))
    vanilla.seed, vanilla.label, vocab.seed, vocab.label = 1, "vanilla", 2, "vocab_cl:token_ids"
    return [Member("vanilla", 1, vanilla), Member("vocab_cl:token_ids", 2, vocab)]


def _member_state(state, i):
    return jax.tree_util.tree_map(lambda x: x[i], state)


@pytest.fixture(scope="module")
def ensemble(tmp_path_factory):
    root = tmp_path_factory.mktemp("ensemble")
    members = _members(root / "cache")
    result = EnsembleTrainer(members, str(root / "ens"), progress=False).run()
    return root, members, result


def test_members_expand_with_the_ensembles_settings_and_one_folder_each():
    members = expand(load_config("ensemble", "smoke"))
    assert [m.dirname for m in members] == ["vanilla_seed42", "vanilla_seed43", "vocab_cl-token_ids_seed42",
                                            "vocab_cl-token_ids_seed43"]
    assert [m.config.label for m in members] == ["vanilla", "vanilla", "vocab_cl:token_ids", "vocab_cl:token_ids"]
    smoke = load_config("vocab_cl", "token_ids,smoke")
    assert members[2].config.trainer.to_dict() == smoke.trainer.to_dict()
    assert members[2].config.vocab_curriculum.to_dict() == smoke.vocab_curriculum.to_dict()
    assert members[0].config.vocab_curriculum.kind == "none"


def test_members_one_step_cannot_serve_are_refused_with_the_field():
    c = load_config("ensemble", "smoke")
    c.ensemble.members = "vanilla.py;objective_cl.py:multitask_pos_nv_mlm_0"  # another unit: another step
    with pytest.raises(ConfigError) as e:
        expand(c)
    assert str(e.value) == (
        "ensemble member 'objective_cl:multitask_pos_nv_mlm_0' (seed 42) differs from 'vanilla' in "
        "objective_curriculum.units.pos_nv.adam_eps (1e-06 vs not set): one compiled step cannot train both; "
        "run them as separate runs (python -m climb_jax.main --config=configs/<file>.py ...) and compare their "
        "workdirs.")


def test_ensemble_equals_its_members_trained_alone(ensemble, tmp_path):
    """vmap batches every matmul and reduction over the members, which changes XLA's summation order on
    CPU: the step is not bit-identical to the solo one even for one member (measured: the first step's
    loss differs in the last bit). Over 40 steps the logged losses stay within 1e-5 relative (measured
    3e-8); the parameters within 1e-4 of each leaf's norm (measured 2e-5): Adam divides by the square root
    of the second moment, so a last-bit difference in a rarely-updated weight's tiny gradient moves it by
    a step of ~lr either way."""
    root, members, result = ensemble
    assert result["stop_reason"] == "done" and result["train_step_compiles"] == 1
    for i, m in enumerate(members):
        solo = train(m.config, tmp_path / m.dirname)
        got = read_metrics(root / "ens" / m.dirname, drop=("step_time_s", "tokens_per_s", "loss"))
        want = read_metrics(tmp_path / m.dirname, drop=("step_time_s", "tokens_per_s", "loss"))
        assert [r["step"] for r in got] == list(range(10, STEPS + 1, 10))
        assert [set(r) for r in got] == [set(r) for r in want]
        losses = [(json.loads(a)["loss"], json.loads(b)["loss"]) for a, b in
                  zip((root / "ens" / m.dirname / "metrics.jsonl").read_text().splitlines(),
                      (tmp_path / m.dirname / "metrics.jsonl").read_text().splitlines())]
        assert all(abs(a - b) <= 1e-5 * abs(b) for a, b in losses), losses
        mine = _member_state(result["state"], i)
        assert int(mine.step) == STEPS
        for a, b in zip(jax.tree_util.tree_leaves(mine.params), jax.tree_util.tree_leaves(solo["state"].params)):
            a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
            assert np.linalg.norm(a - b) <= 1e-4 * np.linalg.norm(b)
        # An ordinary run's files, and its own checkpoints of its own state.
        wd = root / "ens" / m.dirname
        assert json.loads((wd / "config.json").read_text())["label"] == m.label
        assert (wd / "tokenizer").is_dir() and (wd / "done.json").exists()
        assert sorted(int(p.name) for p in (wd / "checkpoints").iterdir() if p.name.isdigit()) == [20, 40]
    status = json.loads((root / "ens" / "ensemble.json").read_text())
    assert [s["status"] for s in status["members"]] == ["done", "done"]


def test_ensemble_resumes_exactly(ensemble, tmp_path):
    root, members, result = ensemble
    first = EnsembleTrainer(_members(root / "cache"), str(tmp_path), progress=False, stop_at=20).run()
    assert first["stop_reason"] == "stop_at" and first["step"] == 20
    resumed = EnsembleTrainer(_members(root / "cache"), str(tmp_path), progress=False).run()
    assert resumed["stop_reason"] == "done"
    assert params_equal(resumed["state"], result["state"])
    for m in members:
        assert read_metrics(tmp_path / m.dirname) == read_metrics(root / "ens" / m.dirname)


def test_a_sick_member_is_stopped_and_the_others_finish(ensemble, tmp_path, capsys):
    root, members, result = ensemble
    trainer = EnsembleTrainer(_members(root / "cache"), str(tmp_path), progress=False)
    sick = trainer.runs[1]
    healthy_at = sick.source.at

    def poisoned(step, threshold=float("inf")):  # a NaN loss from step 25 on (the 26th update)
        cur = healthy_at(step, threshold)
        return cur.replace(unit_weights=cur.unit_weights * jnp.nan) if step >= 25 else cur

    sick.source.at = poisoned
    out = trainer.run()
    assert out["stop_reason"] == "done"
    assert [m["status"] for m in out["members"]] == ["done", "diverged at step 26"]
    assert "member vocab_cl-token_ids_seed2 diverged at step 26" in capsys.readouterr().out
    # The healthy member computed exactly what it computes beside a healthy partner.
    assert params_equal(_member_state(out["state"], 0), _member_state(result["state"], 0))
    # The sick one kept the state of its last finite step (the 25th), and its checkpoint of step 20.
    wd = tmp_path / members[1].dirname
    assert int(_member_state(out["state"], 1).step) == 25
    assert sorted(int(p.name) for p in (wd / "checkpoints").iterdir() if p.name.isdigit()) == [20]
    assert [r["step"] for r in read_metrics(wd)] == [10, 20] and not (wd / "done.json").exists()
    assert (tmp_path / members[0].dirname / "done.json").exists()


def test_compare_reads_the_members_as_arms(ensemble):
    from climb_jax.analysis.runs import find_workdirs, group_runs, load_run

    root, members, _ = ensemble
    found = find_workdirs([root / "ens"])
    assert sorted(p.name for p in found) == sorted(m.dirname for m in members)
    arms = group_runs(load_run(p) for p in found)
    assert sorted(arms) == ["vanilla", "vocab_cl:token_ids"]
