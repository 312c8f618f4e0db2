"""ProcessBench from a reward model: a scripted reward with hand-set step scores gives the
hand-computed table; the threshold sweep; resume; the given-steps door equals a full forward."""

from __future__ import annotations

import json
import math

import pytest
import torch
from omegaconf import OmegaConf

from lrm_builtin.tasks.processbench import ProcessBenchTask
from lrm_engine.processbench_eval import choose_threshold, evaluate_reward, predict, sample_ids, split_held_out

# subset -> [(id, label, hand-set step scores)]
DATA = {
    "gsm8k": [("g0", 1, [0.9, 0.2, 0.8]),   # first below .5: step 1 == label: right
              ("g1", -1, [0.9, 0.7]),       # none below: -1: right
              ("g2", 0, [0.6, 0.3]),        # step 1 != 0: wrong
              ("g3", -1, [0.4, 0.9])],      # step 0, label -1: wrong
    "math": [("m0", 2, [0.8, 0.7, 0.1]),    # right
             ("m1", -1, [0.95]),            # right
             ("m2", -1, [0.6, 0.55])],      # right
}


class ScriptedStepReward:
    """Scores a node by the hand-set score of its step, found from the sample's problem text;
    records every call's depths (the door must ask depth by depth)."""

    name = "scripted"

    def __init__(self):
        self.by_problem = {f"problem {i}": sc for rows in DATA.values() for i, _, sc in rows}
        self.calls: list[list[int]] = []

    def score(self, tree, pairs, policy):
        pairs = torch.as_tensor(pairs).reshape(-1, 2)
        self.calls.append(sorted({int(tree.depth[b, n]) for b, n in pairs.tolist()}))
        out = []
        for b, n in pairs.tolist():
            prompt = policy.text(tree, b, 0, with_prompt=True)
            sc = self.by_problem[prompt.strip()]
            # the step texts come back as given
            assert policy.text(tree, b, n).split("\n\n")[n - 1] == f"step {n - 1}"
            out.append(sc[int(tree.depth[b, n]) - 1])
        return torch.tensor(out, dtype=torch.float32)

    def release(self, tree):
        pass


@pytest.fixture()
def data_dir(tmp_path):
    d = tmp_path / "processbench"
    d.mkdir()
    for s, rows in DATA.items():
        recs = [{"id": i, "generator": "hand", "problem": f"problem {i}",
                 "steps": [f"step {j}" for j in range(len(sc))], "final_answer_correct": lab == -1,
                 "label": lab} for i, lab, sc in rows]
        (d / f"{s}.json").write_text(json.dumps(recs))
    return d


def _cfg(tmp_path):
    return OmegaConf.create({"runtime": {"output_dir": str(tmp_path / "out"), "progress": False,
                                         "overwrite": False},
                             "reward": {"name": "scripted", "path": "x"}})


def test_table_from_hand_set_scores(tmp_path, data_dir, capsys):
    task = ProcessBenchTask(path=str(data_dir), subsets=["gsm8k", "math"], held_out=0.0, threshold=0.5,
                            batch_size=3)
    reward = ScriptedStepReward()
    m = evaluate_reward(task, _cfg(tmp_path), reward)
    # gsm8k: errors 1/2 right, correct 1/2 -> 50 / 50 / F1 50; math: 100 / 100 / 100.
    assert (m["gsm8k/error_acc"], m["gsm8k/correct_acc"], m["gsm8k/f1"]) == pytest.approx((50, 50, 50))
    assert (m["math/error_acc"], m["math/correct_acc"], m["math/f1"]) == pytest.approx((100, 100, 100))
    assert m["avg_f1"] == pytest.approx(75.0)
    # pooled: errors 2/3, correct 3/4, F1 = 2 (2/3)(3/4) / (2/3 + 3/4) = 12/17
    assert m["pooled/error_acc"] == pytest.approx(200 / 3)
    assert m["pooled/correct_acc"] == pytest.approx(75.0)
    assert m["pooled/f1"] == pytest.approx(1200 / 17)
    assert m["threshold"] == 0.5 and m["evaluated"] == 7 and m["held_out"] == 0
    err = capsys.readouterr().err
    assert "avg F1 (paper)" in err and "75.0" in err and "threshold 0.5 fixed" in err
    # batches of 3 solutions, each asked depth by depth: 1, 2, 3 in the first batch
    assert reward.calls[:3] == [[1], [2], [3]]
    # the scores were written, one record per solution
    lines = (tmp_path / "out" / "processbench_scores.jsonl").read_text().splitlines()
    assert sorted(json.loads(x)["id"] for x in lines) == ["g0", "g1", "g2", "g3", "m0", "m1", "m2"]
    assert json.loads(lines[0])["step_scores"] == pytest.approx([0.9, 0.2, 0.8])


def test_resume_scores_nothing_twice(tmp_path, data_dir):
    task = ProcessBenchTask(path=str(data_dir), subsets=["gsm8k", "math"], held_out=0.0, batch_size=4)
    first = evaluate_reward(task, _cfg(tmp_path), ScriptedStepReward())
    again = ScriptedStepReward()
    second = evaluate_reward(task, _cfg(tmp_path), again)
    assert again.calls == [] and second["resumed"] == 7
    assert {k: v for k, v in second.items() if k != "resumed"} == {k: v for k, v in first.items() if k != "resumed"}
    # another reward setting: refused, nothing moved
    cfg = _cfg(tmp_path)
    cfg.reward.path = "y"
    from lrm_engine.core.results import ResultsMismatchError

    with pytest.raises(ResultsMismatchError, match="another configuration"):
        evaluate_reward(task, cfg, ScriptedStepReward())


def test_threshold_sweep_hand_computed():
    # t = 0.3: nothing below -> (-1, -1): error acc 0 -> F1 0. t = 0.6: (1, -1) both right -> 100.
    # t = 0.8: (1, 1): correct acc 0 -> F1 0; 0.9 and above: (0, 0) -> 0.
    samples = {"a": [(1, [0.9, 0.3]), (-1, [0.8, 0.6])]}
    t, f1 = choose_threshold(samples)
    assert t == 0.6 and f1 == pytest.approx(100.0)
    # two subsets: the mean of their F1s is what is maximised
    samples["b"] = [(0, [0.7]), (-1, [0.95])]
    t, f1 = choose_threshold(samples)
    # b at t=0.6: (-1, -1) -> F1 0; mean 50. At t=0.8: a -> 0, b: (0, -1) right -> 100; mean 50.
    # Ties go to the candidate nearest 0.5: 0.6.
    assert t == 0.6 and f1 == pytest.approx(50.0)
    assert predict([0.7, math.nan, 0.1], 0.5) == 2 and predict([math.nan], 0.5) == -1


def test_held_out_split_and_sample_are_fixed_and_disjoint():
    ids = [f"x-{i}" for i in range(40)]
    s = sample_ids(ids, 10)
    assert len(s) == 10 and s == sample_ids(list(reversed(ids)), 10)
    h = split_held_out(sorted(s), 0.25)
    assert len(h) == 2 and h <= s and h == split_held_out(sorted(s, reverse=True), 0.25)
    assert sample_ids(ids, None) == set(ids)


def test_with_held_out_the_table_covers_the_rest(tmp_path, data_dir):
    task = ProcessBenchTask(path=str(data_dir), subsets=["gsm8k", "math"], held_out=0.5, batch_size=8)
    m = evaluate_reward(task, _cfg(tmp_path), ScriptedStepReward())
    held = {s: split_held_out([i for i, _, _ in rows], 0.5) for s, rows in DATA.items()}
    assert m["held_out"] == sum(len(h) for h in held.values()) == 4  # round(2), round(1.5)=2
    assert m["evaluated"] == 3
    want_t, _ = choose_threshold({s: [(lab, sc) for i, lab, sc in rows if i in held[s]]
                                  for s, rows in DATA.items()})
    assert m["threshold"] == pytest.approx(want_t, abs=1e-6)  # scores pass through float32
    assert m["gsm8k/n_error"] + m["gsm8k/n_correct"] + m["math/n_error"] + m["math/n_correct"] == 3


def test_step_only_rewards_and_bad_options():
    from lrm_engine.rewards.given_steps import score_given_steps
    from lrm_engine.core.interfaces import StepConvention

    class Outcome:
        name = "orm"
        scores_steps = False

    with pytest.raises(ValueError, match="finished solutions only"):
        score_given_steps(Outcome(), [("p", ["a"])], step=StepConvention())
    with pytest.raises(ValueError, match="held_out"):
        ProcessBenchTask(held_out=1.0)
    with pytest.raises(ValueError, match="limit"):
        ProcessBenchTask(limit=0)


def test_given_steps_door_equals_full_forward_prm():
    """A real (untrained, micro) token PRM through the door scores exactly what one full forward
    pass over <bos> prompt (step TAG)* reads at each tag."""
    from lrm_engine.core.interfaces import StepConvention
    from lrm_engine.models_tiny import make_tiny_llama
    from lrm_engine.rewards.given_steps import score_given_steps
    from lrm_engine.rewards.prm_token import TokenPRM
    from lrm_engine.tokenization import build_char_tokenizer
    from lrm_engine.train.prm import score_steps

    tok = build_char_tokenizer()
    model = make_tiny_llama("micro", tokenizer=tok, seed=3).eval()
    prm = TokenPRM(model, tok, good_token="+", bad_token="-", step_tag="\n")
    sols = [("2+3*4=\n", ["3*4=12", "2+12=14", "Answer: 14"]), ("7-5=\n", ["7-5=2", "Answer: 2"])]
    got = score_given_steps(prm, sols, step=StepConvention(delimiter="\n"), batch_size=2)
    want = score_steps(model, tok, sols, good_token_id=tok.convert_tokens_to_ids("+"),
                       bad_token_id=tok.convert_tokens_to_ids("-"), step_tag="\n")
    assert [len(g) for g in got] == [3, 2]
    for g, w in zip(got, want):
        assert g == pytest.approx(w, abs=1e-5)
    assert prm.counters.tokens_reused > 0  # later steps read their prefix from the cache
