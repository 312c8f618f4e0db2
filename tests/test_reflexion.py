"""`reflexion` (Shinn et al. 2023) on scripted worlds: attempts judged by the reward model only,
reflections written by the policy into a memory, retries prompted with it; memory=task carried
in run order with the same records for any batch size and across a resume; and the leakage
guard: the reference answer (a sentinel) reaches no prompt and no judgement."""

from __future__ import annotations

import json
import re

import pytest
import torch

from lrm_engine.core.engine import SearchContext, run_search
from lrm_engine.core.interfaces import Example, Problem, StepConvention
from lrm_engine.core.results import ResultsFile
from prompt_policy import PromptPolicy

SENTINEL = "SENTINEL-REF-90210"


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def world(prompt: str) -> list[str]:
    """First try: 5 (wrong). A reflection prompt: 'check the sum'. Prompted with that memory: 7."""
    if prompt.endswith("Reflection: "):
        pid = re.match(r"Problem (\w+)", prompt).group(1)
        return [f"check the sum of {pid}"]
    if "check the sum" in prompt:
        return ["y", "Answer: 7"]
    return ["x", "Answer: 5"]


class TextReward:
    """Scores a step by its text: 'Answer: 7' 0.9, 'Answer: 5' 0.2, anything else 0.6. Keeps every
    text it judged (with its prompt) in ``seen``."""

    name = "text"

    def __init__(self):
        self.seen: list[str] = []

    def score(self, tree, pairs, policy):
        out = []
        for b, n in pairs.tolist():
            text = policy.text(tree, b, n)
            self.seen.append(policy.prompts[-tree.batch_size + b] + text)
            last = text.rstrip("\n").split("\n")[-1]
            out.append(0.9 if "Answer: 7" in last else 0.2 if "Answer: 5" in last else 0.6)
        return torch.tensor(out)


def _ctx():
    pol = PromptPolicy(world)
    reward = TextReward()
    return pol, reward, SearchContext(policy=pol, step=StepConvention(), prompt=lambda p: f"Problem {p.id}\n",
                                      reward=reward, max_steps=4)


def test_reflexion_golden_episode():
    """Attempt 0: path min(0.6, 0.2) = 0.2 < 0.5 -> failed -> reflection 'check the sum of P';
    attempt 1, prompted with it: min(0.6, 0.9) = 0.6 >= 0.5 -> passes, answer 7."""
    from lrm_builtin.search.reflexion import ReflexionSearch

    pol, _, ctx = _ctx()
    (r,) = ReflexionSearch(max_attempts=3, threshold=0.5).run(ctx, [Problem(id="P", question="q")])
    assert r.answer == "7" and r.score == pytest.approx(0.6)
    a0, a1 = r.candidates
    assert a0["score"] == pytest.approx(0.2) and not a0["passed"] and a0["reflection"] == "check the sum of P"
    assert a1["passed"] and a1["memory"] == ["check the sum of P"] and a1["reflection"] is None
    assert a1["memory_after"] == ["check the sum of P"]
    # The prompts: the task prompt; the reflection prompt (with the failed solution and its score);
    # the retry with the memory in front of the task prompt.
    assert pol.prompts[0] == "Problem P\n"
    assert pol.prompts[1].startswith("Problem P\nx\nAnswer: 5\n\nThe solution above scored 0.20")
    assert pol.prompts[2] == "Reflections on earlier attempts:\ncheck the sum of P\nProblem P\n"

    # A threshold nothing reaches: all attempts run, the best-scored one is the answer; the memory
    # keeps only the newest memory_size reflections.
    pol, _, ctx = _ctx()
    (r,) = ReflexionSearch(max_attempts=3, threshold=0.95, memory_size=1).run(ctx, [Problem(id="P", question="q")])
    assert [a["score"] for a in r.candidates] == pytest.approx([0.2, 0.6, 0.6])
    assert r.answer == "7" and not any(a["passed"] for a in r.candidates)
    assert r.candidates[2]["memory"] == ["check the sum of P"]  # 2 reflections written, 1 kept
    assert r.candidates[-1]["memory_after"] == ["check the sum of P"]


def test_reflexion_needs_a_reward_and_checks_settings():
    from lrm_builtin.search.reflexion import ReflexionSearch

    pol = PromptPolicy(world)
    ctx = SearchContext(policy=pol, step=StepConvention(), prompt=lambda p: "Problem P\n")
    with pytest.raises(ValueError, match="needs a reward model"):
        ReflexionSearch().run(ctx, [Problem(id="P", question="q")])
    with pytest.raises(ValueError, match="search.memory"):
        ReflexionSearch(memory="global")
    with pytest.raises(ValueError, match="search.attempt_template"):
        ReflexionSearch(attempt_template="{nope}")


def _run(tmp_path, name, ids, batch_size, memory="task", records=True):
    from lrm_builtin.search.reflexion import ReflexionSearch

    pol, _, ctx = _ctx()
    path = tmp_path / name / "results.jsonl"
    search = ReflexionSearch(memory=memory, records=str(path) if records else None)
    res = ResultsFile(path)
    run_search(search, ctx, [Problem(id=i, question="q") for i in ids], res, batch_size=batch_size, progress=False)
    return [json.loads(x) for x in path.read_text().splitlines()], pol


def test_reflexion_task_memory_carries_in_run_order_and_survives_resume(tmp_path):
    ids = ["P1", "P2", "P3"]
    one, pol = _run(tmp_path, "b1", ids, 1)
    # P1 fails once and reflects; P2 and P3 start with P1's reflection and pass at once.
    assert [len(r["candidates"]) for r in one] == [2, 1, 1]
    assert one[1]["candidates"][0]["memory"] == ["check the sum of P1"] and one[1]["answer"] == "7"
    assert all(r["candidates"][-1]["memory_after"] == ["check the sum of P1"] for r in one)
    # episode memory: every problem needs its own reflection
    ep, _ = _run(tmp_path, "ep", ids, 3, memory="episode")
    assert [len(r["candidates"]) for r in ep] == [2, 2, 2]
    # Any batch size: the same records.
    three, _ = _run(tmp_path, "b3", ids, 3)
    assert [r["candidates"] for r in three] == [r["candidates"] for r in one]
    # Resume: P1 finished in a first process, P2, P3 in a second (fresh search object): the memory
    # is rebuilt from the record of P1, so the records equal the uninterrupted run's.
    _run(tmp_path, "resumed", ids[:1], 2)
    resumed, pol2 = _run(tmp_path, "resumed", ids, 2)
    assert [r["candidates"] for r in resumed] == [r["candidates"] for r in one]
    assert pol2.prompts[0] == "Reflections on earlier attempts:\ncheck the sum of P1\nProblem P2\n"
    # Without the records file the resumed memory would be empty (the second process would differ).
    _run(tmp_path, "lost", ids[:1], 2, records=False)
    lost, _ = _run(tmp_path, "lost", ids, 2, records=False)
    assert lost[1]["candidates"][0]["memory"] == []


class SentinelTask:
    """A task whose reference answer is a sentinel string (and whose grader sees it)."""

    name = "sentinel"
    step = StepConvention()

    def examples(self, split):
        return [Example(problem=Problem(id=f"S{i}", question=f"q{i}"), reference=SENTINEL) for i in range(3)]

    def prompt(self, problem):
        return f"Problem {problem.id}\n"

    def grade(self, example, solution):
        return SENTINEL in solution


def test_reflexion_never_sees_the_reference(tmp_path):
    """Through `lrm search`'s own main (policy, reward and task passed in): the sentinel reference
    is in no prompt the policy gets and in no text the reward model judges, with memory=task and
    a resume reading the graded results file (which holds the references)."""
    from lrm_engine.components import build
    from lrm_engine.composition import compose
    from lrm_engine.verbs.search import main

    out = tmp_path / "out"
    for limit in (1, 3):  # the second call resumes from the first's records
        pol, reward, _ = _ctx()
        cfg = compose(["search=reflexion", "search.memory=task", f"runtime.output_dir={out}",
                       f"search_run.limit={limit}", "runtime.progress=false", "search_run.batch_size=2"])
        comps = build(cfg, task=SentinelTask(), policy=pol, reward=reward)
        main(cfg, comps)
        assert pol.prompts and reward.seen
        assert not any(SENTINEL in p for p in pol.prompts)
        assert not any(SENTINEL in t for t in reward.seen)
    recs = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert len(recs) == 3 and all(r["reference"] == SENTINEL for r in recs)  # the file does hold it
    assert recs[1]["candidates"][0]["memory"] == ["check the sum of S0"]  # rebuilt on resume
