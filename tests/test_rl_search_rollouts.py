"""Search-in-the-loop RL: rollouts produced by a search from the registry (by name), groups =
its finished solutions; a scripted search gives hand-computed advantages / loss, and a tiny
`lrm train objective=grpo objective.rollout.search=beam` run completes."""

import json
import math
from pathlib import Path

import pytest
import torch

from conftest import run_lrm
from lrm_engine.core.interfaces import SearchResult
from rl_fixtures import micro_models, small_task

torch.set_num_threads(1)

WRONG = "no idea"  # no final answer: the verifier says 0


class ScriptedSearch:
    """Returns, per problem, the candidates [gold, WRONG, gold] (the last problem: none)."""

    name = "scripted_rollouts"
    runs: list = []

    def __init__(self, n: int = 3, gold: dict | None = None):
        self.n, self.gold = n, gold or {}

    def run(self, ctx, problems):
        ScriptedSearch.runs.append({"n": self.n, "reward": ctx.reward, "policy": ctx.policy.name,
                                    "ids": [p.id for p in problems]})
        out = []
        for k, p in enumerate(problems):
            g = self.gold[p.id]
            cands = [] if k == len(problems) - 1 else \
                [{"answer": None, "score": 0.5, "text": t} for t in (g, WRONG, g)[: self.n]]
            out.append(SearchResult(id=p.id, answer=None, solution=WRONG, score=math.nan,
                                    candidates=cands))
        return out


@pytest.fixture
def scripted(fresh_plugins):
    from lrm_engine.plugin_manager import get_registry

    ScriptedSearch.runs = []
    get_registry("search").register("scripted_rollouts", ScriptedSearch, description="test")
    yield ScriptedSearch


def test_scripted_search_groups_advantages_and_loss(scripted):
    from lrm_engine.models_tiny import make_tiny_llama
    from lrm_engine.objectives.grpo import GRPOObjective
    from lrm_engine.tokenization import build_char_tokenizer
    from lrm_engine.train.rl_search_rollout import SearchRolloutSource

    task = small_task()
    tok = build_char_tokenizer(extra_chars=task.step.delimiter + task.step.answer_prefix)
    model = make_tiny_llama("micro", tokenizer=tok, seed=0, num_hidden_layers=1)
    gold = {ex.problem.id: task.step.join_steps(ex.solution_steps) for ex in task.examples("train")}
    sentinel = object()
    src = SearchRolloutSource(model, tok, task, search="scripted_rollouts",
                              search_args={"n": 3, "gold": gold}, reward_model=sentinel,
                              prompts_per_batch=3, max_steps=3, max_step_tokens=8, seed=0)
    batch, idx = src.next_batch()
    run = scripted.runs[-1]
    # built by name from the registry with the search_args; the PRM and the policy are the engine's
    assert run["n"] == 3 and run["reward"] is sentinel and run["policy"] in ("tree", "hf")
    assert run["ids"] == [src.examples[i].problem.id for i in idx]
    # groups: 3 candidates, 3 candidates, and the fallback (no finished candidate) of 1 row
    assert batch["group_offsets"].tolist() == [0, 3, 6, 7]
    assert batch["rewards"].tolist() == [1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 0.0]
    assert batch["accuracy"] == pytest.approx(4 / 7)
    # GRPO advantages by hand: group [1, 0, 1]: mean 2/3, unbiased std sqrt(1/3); singleton: 0
    s = math.sqrt(1 / 3) + 1e-4
    want = [(1 / 3) / s, (-2 / 3) / s, (1 / 3) / s] * 2 + [0.0]
    obj = GRPOObjective(beta=0.0, loss_type="bnpo")
    assert obj.advantages(batch).tolist() == pytest.approx(want, rel=1e-5)
    # rows: prompt + the solution text re-encoded + EOS, the completion mask on the solution
    lens = [len(tok.encode(t, add_special_tokens=False)) + 1 for t in (gold[run["ids"][0]], WRONG)]
    cm = batch["completion_mask"]
    assert cm[0].sum().item() == lens[0] and cm[1].sum().item() == lens[1]
    # bnpo on-policy (ratio 1): loss = -sum_i A_i * |c_i| / sum_i |c_i|
    c = cm.sum(-1).float()
    A = torch.tensor(want)
    loss, m = obj.loss(model, batch)
    assert float(loss.detach()) == pytest.approx(float(-(A * c).sum() / c.sum()), rel=1e-5)
    assert m["reward"] == pytest.approx(4 / 7)
    assert batch["log"]["group_size"] == pytest.approx(7 / 3)


def test_unknown_search_lists_the_registered_ones(fresh_plugins):
    from lrm_engine.registry import UnknownComponentError
    from lrm_engine.train.rl_search_rollout import build_search

    with pytest.raises(UnknownComponentError, match="beam"):
        build_search("no_such_search")


TASK = ["task=arith", "task.min_steps=2", "task.max_steps=2", "task.max_operand=9",
        "task.max_value=99", "task.num_train=64", "task.num_test=16", "task.shape=chain"]


def test_grpo_with_beam_search_rollouts_end_to_end(tmp_path):
    pol, prm = micro_models(tmp_path / "models", small_task())
    args = ["train", "objective=grpo", f"runtime.output_dir={tmp_path}", *TASK,
            "runtime.num_threads=1", "runtime.progress=false", "objective.train.total_steps=2",
            "objective.train.micro_batch_size=8", "objective.train.warmup_steps=0",
            "objective.train.save_every=1", "objective.rollout.prompts_per_batch=2",
            "objective.rollout.search=beam", "++objective.rollout.search_args={n: 4, beam_width: 2}",
            f"objective.rollout.search_prm={prm}", "objective.rollout.max_steps=3",
            "objective.rollout.max_step_tokens=8", "objective.eval.enabled=false"]
    r = run_lrm(*args, env={"LRM_DEFAULT_POLICY": pol}, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["steps"] == 2 and {"reward", "accuracy"} <= set(res)
    run = Path(res["run_dir"])
    cfg = json.loads((run / "run_config.json").read_text())
    assert cfg["rollout"]["search"] == "beam" and cfg["rollout"]["search_args"] == {"n": 4, "beam_width": 2}
    ck = json.loads((run / "checkpoints" / "step_2" / "trainer_state.json").read_text())
    assert ck["data"]["position"] == 4 and ck["data"]["search"] == "beam"
    # an unknown search: exit 2, one line naming the field, the value and the registered ones
    bad = [a if not a.startswith("objective.rollout.search=") else "objective.rollout.search=nosuch"
           for a in args]
    r2 = run_lrm(*bad, env={"LRM_DEFAULT_POLICY": pol}, timeout=120)
    assert r2.returncode == 2
    line = [x for x in r2.stderr.strip().splitlines() if "nosuch" in x]
    assert len(line) == 1 and "objective.rollout.search" in line[0] and "beam" in line[0]
    assert "Traceback" not in r2.stderr
