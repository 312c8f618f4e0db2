"""Trustworthy numbers (issue 13): reproducible per-problem sampling, exact per-problem counters,
results fingerprints, splits and the leakage guard, outcome-only rewards, non-finite scores,
the stopping guards (empty steps, the model's context), and robust results files."""

from __future__ import annotations

import json
import math

import pytest
import torch

from lrm_engine.core import rng
from lrm_engine.core.results import ResultsFile, ResultsMismatchError
from lrm_engine.models import SamplingConfig, load_causal_lm, save_tiny_llama
from lrm_engine.models.sampling import sample


# --------------------------------------------------------------------------- counter-based RNG


def test_splitmix64_golden_values():
    # SplitMix64 seeded with 0: its first two outputs are the published 0xE220A8397B1DCDAF and
    # 0x6E789E6AA1B965F4 (splitmix64(x) is the finaliser of x + golden gamma).
    assert rng.splitmix64(torch.tensor(0)).item() == rng._signed(0xE220A8397B1DCDAF)
    assert rng.splitmix64(torch.tensor(rng._signed(0x9E3779B97F4A7C15))).item() == rng._signed(0x6E789E6AA1B965F4)
    xs = torch.randint(-2**62, 2**62, (257,), dtype=torch.int64) * 2 + 1
    assert rng.splitmix64(xs).tolist() == [rng.splitmix64_py(int(x)) for x in xs]
    u = rng.uniform(xs)
    assert bool(((u >= 0) & (u < 1)).all())


def test_problem_keys_are_stable_and_distinct():
    a = rng.problem_key(0, "arith-1")
    assert a == rng.problem_key(0, "arith-1")  # a pure function of (seed, id)
    assert len({a, rng.problem_key(1, "arith-1"), rng.problem_key(0, "arith-2")}) == 3


def test_keyed_sampling_is_per_row_and_follows_the_distribution():
    torch.manual_seed(0)
    logits = torch.randn(5, 11)
    keys = torch.randint(-2**62, 2**62, (5,))
    cfg = SamplingConfig(temperature=0.7, top_p=0.9)
    whole = sample(logits, cfg, keys=keys)
    for r in range(5):  # a row's draw depends on its key and logits only
        assert sample(logits[r:r + 1], cfg, keys=keys[r:r + 1]).item() == whole[r].item()
    assert sample(logits.flip(0), cfg, keys=keys.flip(0)).tolist() == whole.flip(0).tolist()
    # Frequencies over many keys match the probabilities; a zero-probability token never appears.
    p = torch.tensor([0.5, 0.3, 0.2, 0.0])
    n = 20000
    draws = sample(p.log().expand(n, 4), SamplingConfig(), keys=rng.splitmix64(torch.arange(n)))
    freq = torch.bincount(draws, minlength=4).float() / n
    assert torch.allclose(freq[:3], p[:3], atol=0.015), freq
    assert int(freq[3] * n) == 0


# --------------------------------------------------------------------------- search end to end


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("trust")
    pol = save_tiny_llama(root / "policy", hidden_size=32, initializer_range=0.2)
    prm = save_tiny_llama(root / "prm", seed=1, hidden_size=32, initializer_range=0.2)
    return pol, prm


def _cfg(models, out, *extra):
    pol, prm = models
    return ["task=arith", "task.num_test=20", "task.num_train=20", "policy=hf", f"policy.path={pol}",
            "policy.max_step_tokens=6", "reward=prm_token", f"reward.path={prm}",
            "search=best_of_n", "search.n=3", "search_run.limit=5", "search_run.max_steps=3",
            f"runtime.output_dir={out}", "runtime.progress=false", "kernels=reference", *extra]


def _search(models, out, *extra):
    from lrm_engine import build, compose
    from lrm_engine.verbs import search as verb

    cfg = compose(_cfg(models, out, *extra))
    summary = verb.main(cfg, build(cfg))
    recs = {}
    for line in (out / "results.jsonl").read_text().splitlines():
        r = json.loads(line)
        recs[r["id"]] = r
    return summary, recs


def _without_peaks(rec):
    """The record with float scores rounded to 5 decimals (a batched forward pass with other
    padding rounds float32 differently, ~1e-7) and without the batch's KV peak."""
    def walk(x):
        if isinstance(x, float):
            return round(x, 5)
        if isinstance(x, dict):
            return {k: walk(v) for k, v in x.items() if "peak" not in k}
        if isinstance(x, list):
            return [walk(v) for v in x]
        return x
    return walk(rec)


def test_records_are_identical_across_batch_size_and_resume(models, tmp_path):
    torch.set_num_threads(1)
    _, one = _search(models, tmp_path / "b1", "search_run.batch_size=1")
    _, four = _search(models, tmp_path / "b4", "search_run.batch_size=4")
    # Interrupted run: the first 2 problems, then the same folder resumed up to 5 at batch size 3.
    _search(models, tmp_path / "res", "search_run.batch_size=2", "search_run.limit=2")
    summary, resumed = _search(models, tmp_path / "res", "search_run.batch_size=3")
    assert summary["resumed"] == 2 and len(resumed) == 5
    assert len({r["solution"] for r in one.values()}) > 1  # sampled, not constant
    for pid in one:
        # Same solutions, answers, candidates, scores and exact per-problem token counts.
        assert _without_peaks(one[pid]) == _without_peaks(four[pid]) == _without_peaks(resumed[pid]), pid
    # Peaks are the batch's maximum, never divided by the batch size.
    peak = "policy_bytes_resident_peak"
    assert max(r["counters"][peak] for r in four.values()) >= max(r["counters"][peak] for r in one.values()) > 0


def test_per_problem_counters_sum_to_the_run_totals(models, tmp_path):
    from lrm_engine import build, compose
    from lrm_engine.verbs import search as verb

    cfg = compose(_cfg(models, tmp_path, "search_run.batch_size=3"))
    comps = build(cfg)
    summary = verb.main(cfg, comps)
    recs = [json.loads(x) for x in (tmp_path / "results.jsonl").read_text().splitlines()]
    pol = comps.policy.resolve().counters if hasattr(comps.policy, "resolve") else comps.policy.counters
    assert sum(r["counters"]["policy_tokens_computed"] for r in recs) == pol.tokens_computed
    assert summary["policy_tokens_computed"] == pol.tokens_computed
    assert all(r["counters"]["policy_forward_calls"] <= pol.forward_calls for r in recs)


def test_resume_under_another_config_is_refused_then_overwritten(models, tmp_path):
    _search(models, tmp_path, "search_run.batch_size=5")
    with pytest.raises(ResultsMismatchError) as e:
        _search(models, tmp_path, "search=majority", "search.n=4")
    msg = str(e.value)
    assert "\n" not in msg and "runtime.overwrite=true" in msg and "runtime.output_dir" in msg
    assert "search.name: 'best_of_n' -> 'majority'" in msg
    before = (tmp_path / "results.jsonl").read_bytes()
    summary, recs = _search(models, tmp_path, "search=majority", "search.n=4", "runtime.overwrite=true")
    assert summary["resumed"] == 0 and len(recs) == 5
    assert (tmp_path / "results.jsonl.replaced-1").read_bytes() == before  # moved aside, not deleted
    # Knobs that do not shape records (batch size, threads) resume the same results.
    summary, _ = _search(models, tmp_path, "search=majority", "search.n=4", "search_run.batch_size=2",
                         "runtime.num_threads=1")
    assert summary["resumed"] == 5


# --------------------------------------------------------------------------- splits and leakage


def test_split_defaults_per_verb():
    from lrm_engine import compose
    from lrm_engine.verbs.search import settings

    cfg = compose([])
    assert settings(cfg)["split"] == "test"
    assert settings(cfg, default_split="train")["split"] == "train"
    assert settings(compose(["search_run.split=validation"]), "train")["split"] == "validation"


def test_leakage_guard_refuses_models_trained_on_the_evaluated_split(models, tmp_path):
    import shutil

    from lrm_engine import compose
    from lrm_engine.leakage import LeakageError, write_trained_on

    pol, prm = models
    task_ids = [ex.problem.id for ex in __import__("lrm_builtin.tasks.arith", fromlist=["x"])
                .ArithTask(num_test=20, num_train=20).examples("test")]
    leaky = tmp_path / "leaky_prm"
    shutil.copytree(prm, leaky)
    write_trained_on(leaky, "arith", task_ids[3:4])
    from lrm_engine import build
    from lrm_engine.verbs import search as verb

    cfg = compose(_cfg(models, tmp_path / "out", f"reward.path={leaky}"))
    with pytest.raises(LeakageError, match=r"reward.path=.* 1 problem\(s\) of the arith test split"):
        verb.main(cfg, build(cfg))
    assert not (tmp_path / "out" / "results.jsonl").exists()
    # Trained on other ids (or on another task's): fine.
    write_trained_on(leaky, "gsm8k", task_ids)  # merges, arith still leaks
    cfg = compose(_cfg(models, tmp_path / "ok", "search_run.split=train", f"reward.path={leaky}"))
    verb.main(cfg, build(cfg))


def test_prm_training_refuses_data_from_its_evaluation_split(tmp_path):
    from lrm_builtin.tasks.arith import ArithTask

    from lrm_engine.leakage import LeakageError
    from lrm_engine.train import PRMEvalConfig, train_prm
    from lrm_engine.train.prm_data import oracle_prm_records

    task = ArithTask(num_test=10, num_train=10)
    records = oracle_prm_records(task, "test", limit=4, noise_fraction=0.5, noise_seed=0)
    with pytest.raises(LeakageError, match="the PRM's training data contains 4 problem"):
        train_prm(tmp_path, records=records, task=task, model_size="micro",
                  train={"total_steps": 1, "progress": False},
                  evaluate=PRMEvalConfig(split="test", num_problems=10))
    assert not (tmp_path / "model").exists()


# --------------------------------------------------------------------------- rewards in searches


class _ConstReward:
    """Scores every step with the given values in turn (to inject NaN / inf)."""

    def __init__(self, values):
        self.values = values
        self.calls = []

    def score(self, tree, pairs, policy):
        self.calls.append(pairs.clone())
        v = torch.tensor(self.values, dtype=torch.float32)
        return v.repeat(pairs.shape[0] // len(self.values) + 1)[: pairs.shape[0]]


def _scripted_ctx(reward, depth):
    from lrm_engine.core.engine import SearchContext
    from lrm_engine.core.interfaces import StepConvention
    from lrm_engine.testing import ScriptedPolicy, ScriptedWorld

    world = ScriptedWorld(branching=3, depth=depth, logprob=lambda p: -float(p[-1]),
                          score=lambda p: 0.5, answer=lambda p: str(p[-1]))
    return SearchContext(policy=ScriptedPolicy(world), step=StepConvention(), prompt=lambda p: "",
                         reward=reward)


def test_outcome_reward_scores_terminal_nodes_and_step_searches_refuse_it():
    from lrm_builtin.search.dvts import DVTSSearch
    from lrm_builtin.search.sampled import BestOfNSearch

    from lrm_engine.core.engine import check_reward_fits
    from lrm_engine.errors import UserError
    from lrm_engine.rewards.outcome import OutcomeRM

    inner = _ConstReward([0.25])
    orm = OutcomeRM(inner)
    with pytest.raises(UserError, match="search=dvts ranks unfinished reasoning paths.*reward=orm"):
        check_reward_fits(DVTSSearch(), orm)
    check_reward_fits(BestOfNSearch(), orm)  # scores whole solutions: fine
    from lrm_engine.core.interfaces import Problem

    ctx = _scripted_ctx(orm, depth=2)
    tree = ctx.new_tree([Problem("p", "q")], num_actions=3, capacity=16)
    exp = ctx.expand(tree, torch.zeros((1, 1), dtype=torch.int32), 3)  # unfinished steps
    assert torch.isnan(exp.scores).all() and not inner.calls
    exp = ctx.expand(tree, exp.children[:, 0, :1], 3)  # finished solutions
    assert bool(tree.terminal[0, exp.pairs[:, 1]].all()) and exp.scores.tolist() == [0.25] * 3
    assert [int(c.shape[0]) for c in inner.calls] == [3]
    assert ctx.counters()["reward_nonfinite_scores"] == 0


def test_non_finite_step_scores_are_counted_and_never_preferred():
    from lrm_engine.core.interfaces import Problem

    ctx = _scripted_ctx(_ConstReward([math.nan, math.inf, 0.6]), depth=1)
    tree = ctx.new_tree([Problem("p", "q")], num_actions=3, capacity=8)
    exp = ctx.expand(tree, torch.zeros((1, 1), dtype=torch.int32), 3)
    assert exp.scores.tolist() == pytest.approx([0.0, 0.0, 0.6])
    assert ctx.counters()["reward_nonfinite_scores"] == 2
    best = int(ctx.path_scores(tree)[0, exp.pairs[:, 1]].argmax())
    assert exp.scores[best] == pytest.approx(0.6)


def test_judge_verdicts_reach_the_counters():
    class Judge:
        counters_judge = {"judged": 3, "unparseable": 2}

    ctx = _scripted_ctx(Judge(), depth=1)
    c = ctx.counters()
    assert c["reward_judge_unparseable"] == 2 and c["reward_judge_judged"] == 3


# --------------------------------------------------------------------------- stopping guards


def _biased(model, token_ids, value):
    """Add ``value`` to the logits of ``token_ids`` at every forward pass."""
    bias = torch.zeros(model.lm_head.weight.shape[0])
    bias[list(token_ids)] = value
    model.lm_head.register_forward_hook(lambda m, i, out: out + bias)
    return model


def test_empty_steps_end_the_path(tmp_path):
    from lrm_engine.core.engine import SearchContext
    from lrm_engine.core.interfaces import Problem, StepConvention
    from lrm_engine.models.hf_policy import HFPolicy
    from lrm_builtin.search.greedy import GreedySearch

    model, tok = load_causal_lm(save_tiny_llama(tmp_path / "m", hidden_size=32))
    nl = tok.convert_tokens_to_ids("\n")
    step = StepConvention(delimiter="\n", answer_prefix="Answer:")
    pol = HFPolicy(_biased(model, [nl], 1e4), tok, step=step, max_step_tokens=8)  # steps are "\n"
    ctx = SearchContext(policy=pol, step=step, prompt=lambda p: p.question, max_steps=100000)
    out = GreedySearch().run(ctx, [Problem("p", "1+1=")])
    assert out[0].answer is None
    assert pol.counters.empty_steps == 1 and pol.counters.forward_calls <= 3


def test_steps_stop_at_the_model_context(tmp_path):
    from lrm_engine.core.engine import SearchContext
    from lrm_engine.core.interfaces import Problem, StepConvention
    from lrm_engine.models.hf_policy import HFPolicy
    from lrm_builtin.search.greedy import GreedySearch

    model, tok = load_causal_lm(save_tiny_llama(tmp_path / "m", hidden_size=32,
                                                max_position_embeddings=24))
    stop = [tok.convert_tokens_to_ids("\n"), tok.eos_token_id]
    step = StepConvention(delimiter="\n", answer_prefix="Answer:")
    pol = HFPolicy(_biased(model, stop, -1e4), tok, step=step, max_step_tokens=100000)  # no stop
    ctx = SearchContext(policy=pol, step=step, prompt=lambda p: p.question, max_steps=50)
    out = GreedySearch().run(ctx, [Problem("p", "12+34=")])
    assert pol.counters.context_stops == 1 and out[0].answer is None
    # The prompt, then one token at a time until the path holds 24 (the last one is not fed).
    assert pol.counters.tokens_computed == 24 - 1 and pol.counters.forward_calls == 24 - 7 + 1


# --------------------------------------------------------------------------- results files


def test_results_file_keeps_every_good_record(tmp_path, capsys):
    path = tmp_path / "results.jsonl"
    good = [json.dumps({"id": f"p{i}", "answer": str(i)}).encode() + b"\n" for i in range(48)]
    bad = [b"\n", b"{not json\n", b"\xff\xfe binary \x00\n", b'{"answer": "no id"}\n',
           b'{"id": "p3", "answer": "again"}\n', b"[1, 2]\n"]
    lines = good[:10] + bad[:1] + good[10:20] + bad[1:3] + good[20:40] + bad[3:] + good[40:]
    path.write_bytes(b"".join(lines) + b'{"id": "torn", "ans')
    rf = ResultsFile(path)
    assert [r["id"] for r in rf.records()] == [f"p{i}" for i in range(48)]
    assert rf.records()[3]["answer"] == "3"  # the first record of an id wins
    assert rf.bad_lines == 6
    assert path.read_bytes() == b"".join(good)  # rewritten with the good records, torn tail cut
    kept = (tmp_path / "results.jsonl.bad").read_bytes().splitlines()
    assert kept[0] == b"results.jsonl:11: " and kept[2].startswith(b"results.jsonl:23: \xff\xfe")
    err = capsys.readouterr().err
    assert "6 line(s) that are not records moved to" in err and "line 11 (blank line)" in err
    again = ResultsFile(path)  # nothing left to set aside: nothing reported twice
    assert again.bad_lines == 0 and len(again.records()) == 48


def test_grouped_output_keeps_good_records(tmp_path):
    from lrm_builtin.annotators.common import GroupedOutput

    out = GroupedOutput(tmp_path / "pairs.jsonl")
    out.commit([("a", [{"id": "a#0"}, {"id": "a#1"}], "ok"), ("b", [{"id": "b#0"}], "ok")])
    raw = (tmp_path / "pairs.jsonl").read_bytes().splitlines(keepends=True)
    (tmp_path / "pairs.jsonl").write_bytes(raw[0] + b"\n" + raw[1] + b"garbage\n" + raw[2])
    again = GroupedOutput(tmp_path / "pairs.jsonl")
    assert sorted(r["id"] for r in again.records()) == ["a#0", "a#1", "b#0"]
    assert len((tmp_path / "pairs.jsonl.bad").read_bytes().splitlines()) == 2


# --------------------------------------------------------------------------- sweeps


def test_sweep_jobs_get_their_own_folders_and_one_table(models, tmp_path):
    from conftest import run_lrm

    args = [a for a in _cfg(models, tmp_path / "sweep") if not a.startswith(("search=", "search.n="))]
    r = run_lrm("search", "-m", "search=majority", "search.n=1,4", *args,
                env={"OMP_NUM_THREADS": "1"}, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    jobs = [tmp_path / "sweep" / "search.n=1", tmp_path / "sweep" / "search.n=4"]
    sums = [json.loads((j / "summary.json").read_text()) for j in jobs]
    assert [s["resumed"] for s in sums] == [0, 0]  # job 2 did not resume job 1's records
    assert sums[1]["policy_tokens_computed"] > sums[0]["policy_tokens_computed"]
    table = (tmp_path / "sweep" / "sweep.md").read_text().splitlines()
    assert table[0].startswith("| search.n | problems | accuracy |") and len(table) == 4
    assert table[2].split("|")[1].strip() == "1" and table[3].split("|")[1].strip() == "4"
    assert table[2] != table[3] and "\n".join(table) in r.stdout
    # Rerunning the sweep resumes each job in its own folder.
    r = run_lrm("search", "-m", "search=majority", "search.n=1,4", *args,
                env={"OMP_NUM_THREADS": "1"}, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert [json.loads((j / "summary.json").read_text())["resumed"] for j in jobs] == [5, 5]


def test_run_notes_name_what_went_differently():
    from lrm_engine.verbs.search import run_notes

    assert run_notes({"policy_tokens_computed": 10}) == []
    notes = run_notes({"policy_budget_overruns": 2, "policy_bytes_resident_peak": 3 * 2**20,
                       "policy_context_stops": 1, "reward_nonfinite_scores": 4,
                       "reward_judge_unparseable": 2, "reward_judge_judged": 9}, bad_lines=1)
    assert notes[0] == ("the policy's pinned KV segments exceeded policy.kv_budget_mb 2 time(s) "
                        "(peak 3.0 MiB): raise it or lower search_run.batch_size")
    assert len(notes) == 5 and "2 of 9 judge verdicts" in notes[3] and "results.jsonl.bad" in notes[4]
