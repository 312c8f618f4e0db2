"""rest_mcts: golden value targets, and 2 ReST-MCTS* iterations at toy size (micro models)."""

import json

import pytest
import torch

from lrm_engine.train.rest_mcts import value_targets

torch.set_num_threads(1)


def test_value_targets_golden():
    # root 0 -> 1 -> {2 (correct), 3 -> 4 (wrong)} ; 0 -> 5 (no finished solution below)
    parents = [-1, 0, 1, 1, 3, 0]
    v = value_targets(parents, {2: True, 4: False})
    # node 1: r=0, m=1 (to node 2): v = 0 + (1-0)/2 = 0.5
    assert v[1] == pytest.approx(0.5)
    # node 2: r=0, m=0: v = 0.5 + 0.5/1 = 1
    assert v[2] == pytest.approx(1.0)
    # node 3: r=1, m=1: v = 0.5 - 0.5/2 = 0.25 ; node 4: r=1, m=0: v = 0.25 - 0.75 -> 0
    assert v[3] == pytest.approx(0.25) and v[4] == pytest.approx(0.0)
    assert 5 not in v


def test_two_iterations_at_toy_size(tmp_path):
    from lrm_engine.train.rest_mcts import train_rest_mcts
    from rl_fixtures import micro_models, small_task

    task = small_task()
    pol, prm = micro_models(tmp_path / "models", task)
    kw = dict(task=task, policy=pol, prm=prm, iterations=2, problems_per_iteration=3,
              simulations=4, k=2, num_leaves=2, max_steps=3, max_step_tokens=8, search_batch=3,
              policy_steps=1, policy_batch=4, prm_steps=1, prm_batch=4, eval_problems=3)
    res = train_rest_mcts(tmp_path / "run", **kw)
    rows = res["iterations"]
    assert [r["iteration"] for r in rows] == [0, 1, 2]
    assert all(0.0 <= r["greedy_accuracy"] <= 1.0 for r in rows)
    assert all("search_accuracy" in r and r["prm_records"] >= 0 for r in rows[1:])
    for i in (0, 1):
        d = tmp_path / "run" / f"iter_{i}"
        assert (d / "done.json").is_file() and (d / "search.jsonl").is_file()
    # a micro policy rarely solves anything: PRM records come from every finished path anyway
    assert sum(r["finished_solutions"] for r in rows[1:]) > 0
    # rerun: both iterations are done, nothing is searched again
    again = train_rest_mcts(tmp_path / "run", **kw)
    assert [r["iteration"] for r in again["iterations"]] == [0, 1, 2]


def test_a_likelihood_prm_is_searched_and_trained_with_its_readout(tmp_path, monkeypatch):
    """The PRM folder's prm_config.json read-out is used for scoring the search and for its
    training (a likelihood PRM read at a tag it was never trained on would guide nothing)."""
    from lrm_engine.objectives.prm import PRMObjective
    from lrm_engine.rewards.prm_token import TokenPRM
    from lrm_engine.train import train_prm
    from lrm_engine.train.prm_data import oracle_prm_records
    from lrm_engine.train.rest_mcts import train_rest_mcts
    from rl_fixtures import micro_models, small_task

    task = small_task()
    pol, _ = micro_models(tmp_path / "models", task)
    recs = oracle_prm_records(task, "train", limit=8, noise_fraction=0.5, noise_seed=0)
    prm = train_prm(tmp_path / "lik", records=recs, task=task, model=pol, objective=PRMObjective(readout="likelihood"),
                    train=dict(total_steps=1, micro_batch_size=4, save_every=0, progress=False, tensorboard=False),
                    evaluate=False).model_dir
    seen = {"reward": [], "objective": []}
    for cls, key in ((TokenPRM, "reward"), (PRMObjective, "objective")):
        orig = cls.__init__

        def spy(self, *a, _orig=orig, _key=key, **kw):
            seen[_key].append(kw.get("readout", "tag"))
            _orig(self, *a, **kw)

        monkeypatch.setattr(cls, "__init__", spy)
    train_rest_mcts(tmp_path / "run", task=task, policy=pol, prm=prm, iterations=1, problems_per_iteration=3,
                    simulations=4, k=2, num_leaves=2, max_steps=3, max_step_tokens=8, search_batch=3,
                    policy_steps=1, policy_batch=4, prm_steps=1, prm_batch=4, eval_problems=2)
    assert seen["reward"] == ["likelihood"] and seen["objective"] == ["likelihood"]
    assert json.loads((tmp_path / "run" / "prm_model" / "prm_config.json").read_text())["readout"] == "likelihood"
