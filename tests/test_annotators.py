"""omegaprm, judge, pairs, journey on the scripted world (tests/scripted_annotate.py), with
hand-checked labels; output formats load back; bad input is counted, never a crash."""

from __future__ import annotations

import json

import pytest
import torch

from scripted_annotate import examples, grade, make_ctx, truth, world, PrefixPolicy, STEP

from lrm_builtin.annotators.common import GroupedOutput, read_examples_jsonl
from lrm_builtin.annotators.journey import JourneyAnnotator
from lrm_builtin.annotators.judge import JudgeAnnotator
from lrm_builtin.annotators.omegaprm import OmegaPRMAnnotator
from lrm_builtin.annotators.pairs import PairsAnnotator
from lrm_engine.core.engine import SearchContext
from lrm_engine.train.pref_data import load_pref_jsonl
from lrm_engine.train.prm_data import load_prm_jsonl
from lrm_engine.train.sft_data import load_sft_jsonl

torch.set_num_threads(1)


def run(ann, exs, tmp_path, ctx=None):
    out = ann.open_output(tmp_path)
    ann.annotate(ctx or make_ctx(), exs, grade, out, batch_size=2, progress=False)
    return out


# ---------------------------------------------------------------------------------- omegaprm


def test_omegaprm_binary_search_finds_the_first_error(tmp_path):
    # Root: 3 rollouts (0,0,0,0) yes, (1,0,2,0) no, (2,0,0,0) yes -> MC 2/3; the wrong one is
    # searched: mid=1 probes (s1c1, s2c0): children (1,0,2) no, (1,0,0)->yes, (1,0,1)->yes: MC
    # 2/3 > 0, go right; probes (s1c1, s2c0, s3c2): all continuations no: MC 0 -> first error =
    # step 2 (0-based). 3 probes x 3 rollouts. The probe's own wrong rollout is the same
    # solution: not searched twice.
    ann = OmegaPRMAnnotator(num_rollouts=3, max_searches=2)
    out = run(ann, examples(3), tmp_path)
    recs = {r["id"]: r for r in out.records()}
    assert sorted(recs) == ["e0#0", "e0#1", "e1#0", "e1#1", "e2#0", "e2#1"]
    r = recs["e0#0"]
    assert r["completions"] == ["s1c1", "s2c0", "s3c2", "s4c0 Answer: no"]
    assert r["labels"] == [True, True, False, False] == truth(r["completions"])
    assert r["soft_labels"] == pytest.approx([2 / 3, 2 / 3, 0.0, 0.0])
    assert r["first_error"] == 2 and r["rollouts"] == 9
    ok = recs["e0#1"]
    assert ok["completions"] == ["s1c0", "s2c0", "s3c0", "s4c0 Answer: yes"]
    assert ok["labels"] == [True] * 4
    assert ann.stats["rollouts"] == 27 and ann.stats["searches"] == 3
    loaded = load_prm_jsonl(out.path)
    assert loaded.skipped == 0 and len(loaded.records) == 6


def test_omegaprm_truncates_and_skips_unsolvable(tmp_path):
    ann = OmegaPRMAnnotator(num_rollouts=3, truncate_at_error=True, include_correct=False)
    exs = examples(1) + [e for e in examples(2, reference="zzz")[1:]]  # e1: no rollout is right
    out = run(ann, exs, tmp_path)
    recs = out.records()
    assert [r["completions"] for r in recs] == [["s1c1", "s2c0", "s3c2"]]
    assert recs[0]["labels"] == [True, True, False]
    status = {p["id"]: p["status"] for p in out.problems()}
    assert status == {"e0": "ok", "e1": "no_correct_rollout"}


def test_omegaprm_selection_heuristic():
    ann = OmegaPRMAnnotator(alpha=0.5, beta=0.9, length_scale=10.0)
    # Q prefers states that look right (MC high) and short rollouts
    assert ann.q_value(0.9, ["ab"]) > ann.q_value(0.1, ["ab"])
    assert ann.q_value(0.5, ["a"]) > ann.q_value(0.5, ["a" * 30])
    assert ann.q_value(1.0, []) == pytest.approx(1.0)
    assert ann.q_value(0.0, ["123456789"]) == pytest.approx(0.5 * 0.9)


# ---------------------------------------------------------------------------------- judge


def fake_judge(prompts):
    out = []
    for p in prompts:
        last = [line for line in p.splitlines() if line.startswith("Step ") and ":" in line][-1]
        out.append("Step 9 is incorrect." if "c2" in last else ("¯\\_(ツ)_/¯" if "c1" in last else " correct"))
    return out


def test_judge_labels_with_robust_parsing(tmp_path):
    # solutions (0,0,0,0) and (1,0,2,0); verdicts: c1 -> unparseable, c2 -> incorrect
    ann = JudgeAnnotator(num_solutions=2, generate=fake_judge)
    out = run(ann, examples(1), tmp_path)
    recs = {r["id"]: r for r in out.records()}
    assert recs["e0#0"]["labels"] == [True] * 4 and recs["e0#0"]["answer_correct"] is True
    r = recs["e0#1"]
    assert r["verdicts"] == [None, 1.0, 0.0, 1.0]
    assert r["labels"] == [0.5, True, False, False]  # neutral; wrong propagates after step 3
    assert ann.stats["unparseable"] == 1 and ann.stats["judged_steps"] == 8
    assert load_prm_jsonl(out.path).skipped == 0


def test_judge_skip_mode_broken_judge_and_no_reference(tmp_path):
    ann = JudgeAnnotator(num_solutions=2, generate=fake_judge, unparseable="skip")
    recs = run(ann, examples(1), tmp_path / "a").records()
    assert [r["id"] for r in recs] == ["e0#0"] and ann.stats["skipped_unparseable_solutions"] == 1

    def broken(prompts):
        raise RuntimeError("judge fell over")

    ann = JudgeAnnotator(generate=broken)
    recs = run(ann, examples(2, reference=""), tmp_path / "b").records()  # no reference needed
    assert len(recs) == 2 and all(r["labels"] == [0.5] * 4 for r in recs)
    assert "answer_correct" not in recs[0]
    assert ann.stats["judge_errors"] == 1 and ann.stats["unparseable"] == 8
    ann = JudgeAnnotator(generate=lambda ps: ["correct"])  # wrong number of replies
    assert len(run(ann, examples(1), tmp_path / "c").records()) == 1
    assert ann.stats["judge_errors"] == 1


# ---------------------------------------------------------------------------------- pairs


def test_pairs_step_and_solution_pairs(tmp_path):
    # depth 0: s1c0 and s1c2 (MC 1) beat s1c1 (MC 0: its rollouts take s3c2); the search goes
    # down s1c0, then s2c0 (all MC 1: no pair); depth 2: s3c0, s3c1 (MC 1) beat s3c2 (MC 0).
    ann = PairsAnnotator(num_candidates=3, num_rollouts=2, max_depth=4)
    out = run(ann, examples(1), tmp_path)
    recs = out.records()
    steps = [(r["prefix"], r["chosen"], r["rejected"], r["score_chosen"], r["score_rejected"])
             for r in recs if r["kind"] == "step"]
    assert steps == [("", "s1c0", "s1c1", 1.0, 0.0), ("", "s1c2", "s1c1", 1.0, 0.0),
                     ("s1c0\ns2c0\n", "s3c0", "s3c2", 1.0, 0.0),
                     ("s1c0\ns2c0\n", "s3c1", "s3c2", 1.0, 0.0)]
    sols = [r for r in recs if r["kind"] == "solution"]
    assert len(sols) == 2
    for r in sols:
        assert grade(examples(1)[0], r["chosen"]) and not grade(examples(1)[0], r["rejected"])
    loaded = load_pref_jsonl(out.path, require_margin=True)
    assert loaded.skipped == 0 and len(loaded.records) == 6
    assert loaded.records[2].prefix == "s1c0\ns2c0\n"
    # margin: a gap of exactly 1.0 is not > 1.0
    ann = PairsAnnotator(num_candidates=3, num_rollouts=2, margin=1.0, prefix_in_prompt=True)
    recs = run(ann, examples(1), tmp_path / "m").records()
    assert all(r["kind"] == "solution" for r in recs)


class EmptyStepWorld:
    """The same world, but choice 1 at depth 2 generates an empty step."""

    def __new__(cls):
        w = world()
        base = w.step_text
        w.step_text = lambda p: "" if (len(p) == 2 and p[-1] == 1) else base(p)
        return w


def test_pairs_with_empty_generations_never_pairs_an_empty_step(tmp_path):
    ctx = SearchContext(policy=PrefixPolicy(EmptyStepWorld()), step=STEP,
                        prompt=lambda p: p.question + "\n", max_steps=6)
    ann = PairsAnnotator(num_candidates=3, num_rollouts=2, max_depth=4)
    out = run(ann, examples(2), tmp_path, ctx)
    assert ann.stats["empty_rollouts"] > 0
    for r in out.records():
        assert r["chosen"].strip() and r["rejected"].strip()
        assert "\n\n" not in r["chosen"] + r["rejected"]
    assert load_pref_jsonl(out.path).skipped == 0


# ---------------------------------------------------------------------------------- journey


def test_journey_goes_wrong_reflects_and_backtracks(tmp_path):
    ann = JourneyAnnotator(num_candidates=3, num_rollouts=2)
    out = run(ann, examples(1), tmp_path)
    (r,) = out.records()
    assert r["completion"] == (
        "s1c0\ns2c0\ns3c2\n"
        "Wait, step 3 is wrong because none of the 2 ways I tried to continue from \"s3c2\" "
        "reaches a correct answer. Let me go back to step 2 and try a different step.\n"
        "s3c0\ns4c0 Answer: yes\n")
    assert r["wrong_step"] == 2 and r["prompt"] == "q0\n"
    assert grade(examples(1)[0], r["completion"])
    loaded = load_sft_jsonl(out.path)
    assert loaded.skipped == 0 and loaded.records[0].meta["id"] == "e0#j0"
    with pytest.raises(ValueError, match="bad template"):
        JourneyAnnotator(reflection="{nope}")


# ---------------------------------------------------------------------------------- robustness


def test_malformed_input_and_missing_references_are_counted(tmp_path):
    p = tmp_path / "in.jsonl"
    p.write_text("\n".join([
        json.dumps({"id": "a", "question": "qa", "reference": "yes"}),
        "{not json",
        json.dumps({"id": "b"}),
        json.dumps(["a", "list"]),
        json.dumps({"id": "a", "question": "dup", "reference": "yes"}),
        json.dumps({"id": "c", "question": "qc"}),  # no reference
        "",
        json.dumps({"question": "qd", "answer": 7}),
    ]) + "\n")
    exs, errors = read_examples_jsonl(p)
    assert [e.problem.id for e in exs] == ["a", "c", "line8"]
    assert exs[2].reference == "7" and exs[1].reference == ""
    assert len(errors) == 4 and errors[0].endswith(":2: invalid JSON (Expecting property name "
                                                   "enclosed in double quotes: line 1 column 2 (char 1))")
    ann = OmegaPRMAnnotator(num_rollouts=3, input_file=str(p))
    exs, _ = ann.read_input()
    out = run(ann, exs, tmp_path / "o")
    assert ann.stats["malformed_input"] == 4 and ann.stats["skipped_no_reference"] == 1
    assert {q["id"]: q["status"] for q in out.problems()}["c"] == "no_reference"


def test_grouped_output_drops_torn_and_orphan_records(tmp_path):
    out = GroupedOutput(tmp_path / "x.jsonl")
    out.commit([("p1", [{"id": "p1#0", "v": 1}, {"id": "p1#1", "v": 2}], "ok"), ("p2", [], "none")])
    with open(tmp_path / "x.jsonl", "a") as f:  # a killed run: p3's records, no ledger line, torn
        f.write(json.dumps({"id": "p3#0", "problem_id": "p3"}) + "\n" + '{"id": "p3#1", "prob')
    again = GroupedOutput(tmp_path / "x.jsonl")
    assert [r["id"] for r in again.records()] == ["p1#0", "p1#1"] and again.dropped_on_open == 2
    assert again.done("p2") and not again.done("p3")
    assert len((tmp_path / "x.jsonl").read_text().splitlines()) == 2
