"""The arith task: generator, splits, exact grading, exact step labels, noise injection."""

from __future__ import annotations

import hashlib
import re
from fractions import Fraction

import pytest

from lrm_builtin.tasks.arith import (
    ArithTask,
    NoisySolution,
    corrupt_solution,
    inject_step_noise,
    parse_expression,
    parse_step,
)

Q = "((12+7)*3)-15="


@pytest.fixture(scope="module")
def task():
    return ArithTask(num_train=300, num_test=100)


def _exact_value(question: str) -> Fraction:
    """Independent evaluation: Python's own parser over exact fractions."""
    expr = re.sub(r"\d+", lambda m: f"Fraction({m.group()})", question.rstrip("="))
    return eval(expr, {"Fraction": Fraction})


# ---------------------------------------------------------------- hand-checked examples


def test_gold_solution_hand_checked(task):
    ex = task.make_example(Q)
    assert ex.solution_steps == ("12+7=19", "19*3=57", "57-15=42", "Answer: 42")
    assert ex.reference == "42"
    assert task.prompt(ex.problem) == "((12+7)*3)-15=\n"
    assert task.step.join_steps(ex.solution_steps) == "12+7=19\n19*3=57\n57-15=42\nAnswer: 42\n"


def test_precedence_and_division():
    t = ArithTask()
    ex = t.make_example("2+3*4=")
    assert ex.solution_steps == ("3*4=12", "2+12=14", "Answer: 14")
    ex = t.make_example("84/(3+4)=")
    assert ex.solution_steps == ("3+4=7", "84/7=12", "Answer: 12")
    assert parse_step("12 + 7 = 19") == (12, "+", 7, 19)
    assert parse_step("12+7=19.0") is None


def test_grade_is_exact(task):
    ex = task.make_example(Q)
    assert task.grade(ex, "12+7=19\n19*3=57\n57-15=42\nAnswer: 42\n")
    assert task.grade(ex, "Answer: 42")
    assert not task.grade(ex, "Answer: 43")
    assert not task.grade(ex, "Answer: 42.0")
    assert not task.grade(ex, "12+7=19\n19*3=57\n57-15=42\n")  # no answer line
    assert not task.grade(ex, "Answer: 42\nAnswer: 41\n")  # the last answer line counts


@pytest.mark.parametrize(
    "steps, labels",
    [
        # gold
        (["12+7=19", "19*3=57", "57-15=42", "Answer: 42"], [True, True, True, True]),
        # wrong product carried on consistently: one wrong step
        (["12+7=19", "19*3=58", "58-15=43", "Answer: 43"], [True, False, True, True]),
        # commuted + and * are fine
        (["7+12=19", "3*19=57", "57-15=42", "Answer: 42"], [True, True, True, True]),
        # commuted - is not the same operation
        (["12+7=19", "19*3=57", "15-57=-42", "Answer: -42"], [True, True, False, False]),
        # a true equation on values that are not available (12 was consumed; 4 never existed)
        (["12+7=19", "12*3=36", "19*4=76", "19*3=57", "57-15=42", "Answer: 42"],
         [True, False, False, True, True, True]),
        # operation not yet available (19 is not computed yet)
        (["19*3=57", "12+7=19", "57-15=42", "Answer: 42"], [False, True, False, False]),
        # unparseable step leaves the state unchanged
        (["hello", "12+7=19", "19*3=57", "57-15=42", "Answer: 42"], [False, True, True, True, True]),
        # premature answer; anything after the answer line is wrong
        (["12+7=19", "Answer: 19", "19*3=57"], [True, False, False]),
        (["12+7=19", "19*3=57", "57-15=42", "Answer: 42", "1+1=2"], [True, True, True, True, False]),
        # right answer stated after a wrong chain is inconsistent with the page
        (["12+7=19", "19*3=58", "58-15=43", "Answer: 42"], [True, False, True, False]),
    ],
)
def test_step_labels_hand_checked(task, steps, labels):
    ex = task.make_example(Q)
    assert task.step_labels(ex, steps) == labels
    prefix, ok = [], True
    for lab in labels:
        ok = ok and lab
        prefix.append(ok)
    assert task.prefix_labels(ex, steps) == prefix
    assert task.first_error(ex, steps) == (labels.index(False) if False in labels else -1)


def test_step_labels_any_reduction_order():
    t = ArithTask()
    ex = t.make_example("(2+3)*(4+5)=")
    assert ex.solution_steps == ("2+3=5", "4+5=9", "5*9=45", "Answer: 45")
    assert t.step_labels(ex, ["4+5=9", "2+3=5", "5*9=45", "Answer: 45"]) == [True] * 4
    # inexact division is never a correct step
    ex = t.make_example("(10-3)/7=")
    assert t.step_labels(ex, ["10-3=8", "8/7=1", "Answer: 1"]) == [False, False, True]


def test_custom_delimiter():
    t = ArithTask(delimiter=";", answer_prefix="A=")
    ex = t.make_example(Q)
    text = t.step.join_steps(ex.solution_steps)
    assert text == "12+7=19;19*3=57;57-15=42;A=42;"
    assert t.step.split_steps(text) == list(ex.solution_steps)
    assert t.grade(ex, text)
    assert t.step_labels(ex, t.step.split_steps(text)) == [True] * 4


# ---------------------------------------------------------------- generator and splits


def test_generator_is_seeded(task):
    again = ArithTask(num_train=300, num_test=100)
    assert [e.problem.question for e in task.examples("train")] == [e.problem.question for e in again.examples("train")]
    other = ArithTask(seed=1, num_train=300, num_test=100)
    assert [e.problem.question for e in other.examples("train")] != [e.problem.question for e in task.examples("train")]


@pytest.mark.parametrize("kw", [{}, dict(min_steps=5, max_steps=6, min_operand=10, max_operand=999, max_value=99999)])
def test_generated_problems_are_valid(kw):
    t = ArithTask(num_train=300, num_test=60, **kw)
    for split in ("train", "test"):
        exs = list(t.examples(split))
        assert len(exs) == (300 if split == "train" else 60)
        assert len({e.problem.id for e in exs}) == len(exs)
        for e in exs:
            q = e.problem.question
            assert re.fullmatch(r"[0-9+\-*/()]+=", q)
            value = _exact_value(q)
            assert value.denominator == 1 and str(value.numerator) == e.reference
            steps = e.solution_steps
            assert t.min_steps <= len(steps) - 1 <= t.max_steps
            for s in steps[:-1]:
                a, op, b, c = parse_step(s)
                assert 0 <= c <= t.max_value
                if op == "/":
                    assert b > 1 and a == b * c  # exact division
                if op == "*":
                    assert 2 <= min(a, b) <= t.max_factor
            for n in map(int, re.findall(r"\d+", q)):
                # operands in range; a multiplication factor may be drawn as 2..max_factor
                assert t.min_operand <= n <= t.max_operand or 2 <= n <= t.max_factor
            assert steps[-1] == f"Answer: {e.reference}"
            assert t.step_labels(e, steps) == [True] * len(steps)
            assert t.grade(e, t.step.join_steps(steps))


def test_all_operators_appear(task):
    ops = {parse_step(s)[1] for e in task.examples("train") for s in e.solution_steps[:-1]}
    assert ops == set("+-*/")


def test_splits_disjoint_by_problem():
    t0 = ArithTask(seed=0, num_train=2000, num_test=300)
    t1 = ArithTask(seed=1, num_train=2000, num_test=300)  # different seeds cannot leak either
    train = {e.problem.question for t in (t0, t1) for e in t.examples("train")}
    test = {e.problem.question for t in (t0, t1) for e in t.examples("test")}
    assert train and test and not (train & test)
    # the documented rule, recomputed here: test iff sha256(question) mod 10000 < 1000
    for q in list(test)[:50] + list(train)[:50]:
        h = int.from_bytes(hashlib.sha256(q.encode()).digest()[:8], "big") % 10_000
        assert (h < 1000) == (q in test)


def test_too_small_problem_space_fails_clearly():
    t = ArithTask(min_steps=1, max_steps=1, min_operand=1, max_operand=3, num_train=500)
    with pytest.raises(ValueError, match="too small"):
        list(t.examples("train"))


def test_bad_knobs_rejected():
    with pytest.raises(ValueError):
        ArithTask(min_steps=3, max_steps=2)
    with pytest.raises(ValueError):
        ArithTask(ops="+%")
    with pytest.raises(ValueError, match="unknown split"):
        ArithTask().examples("dev")


# ---------------------------------------------------------------- noise injection


def test_noise_injection_one_wrong_step(task):
    exs = list(task.examples("train"))[:80]
    noisy = inject_step_noise(exs, 0.25, seed=3)
    assert len(noisy) == 80 and all(isinstance(n, NoisySolution) for n in noisy)
    bad = [n for n in noisy if n.error_step >= 0]
    assert len(bad) == 20  # round(0.25 * 80)
    for n in noisy:
        labels = task.step_labels(n.example, n.steps)
        if n.error_step < 0:
            assert n.steps == n.example.solution_steps
            assert all(labels)
        else:
            assert len(n.steps) == len(n.example.solution_steps)
            # exactly one wrong step, where the injector says, the rest consistent with it
            assert [i for i, lab in enumerate(labels) if not lab] == [n.error_step]
            assert task.first_error(n.example, n.steps) == n.error_step
            assert not task.grade(n.example, task.step.join_steps(n.steps))
            assert n.steps[: n.error_step] == n.example.solution_steps[: n.error_step]
    # deterministic in the seed, different across seeds
    again = inject_step_noise(exs, 0.25, seed=3)
    assert [n.steps for n in again] == [n.steps for n in noisy]
    other = inject_step_noise(exs, 0.25, seed=4)
    assert [n.steps for n in other] != [n.steps for n in noisy]


def test_noise_hand_checked_shape():
    import random

    steps, k = corrupt_solution(Q, random.Random(0))
    gold = ["12+7=19", "19*3=57", "57-15=42"]
    a, op, b, c = parse_step(steps[k])
    assert parse_step(gold[k])[:3] == (a, op, b) and c != parse_step(gold[k])[3]
    # the answer line equals the value of the (corrupted) chain
    assert steps[-1] == f"Answer: {parse_step(steps[-2])[3]}"


def test_noisy_solutions_fraction_bounds(task):
    assert all(n.error_step == -1 for n in task.noisy_solutions("train", 0.0, limit=20))
    assert all(n.error_step >= 0 for n in task.noisy_solutions("train", 1.0, limit=20))
    with pytest.raises(ValueError):
        inject_step_noise([], 1.5)


def test_parse_expression_rejects_garbage():
    with pytest.raises(ValueError):
        parse_expression("(1+2=")
    with pytest.raises(ValueError):
        parse_expression("1+a=")


# ---------------------------------------------------------------- plugin registration


def test_registered_and_composed():
    pm = pytest.importorskip("lrm_engine.plugin_manager")
    composition = pytest.importorskip("lrm_engine.composition")
    components = pytest.importorskip("lrm_engine.components")
    pm.get_plugin_manager()
    names = set(pm.get_registry("task").names())
    assert {"arith", "gsm8k", "math500", "processbench"} <= names
    for option in ("arith", "arith_hard", "gsm8k", "math500", "processbench"):
        cfg = composition.compose([f"task={option}"])
        built = components.build(cfg).task
        assert built.name == cfg.task.name
    hard = components.build(composition.compose(["task=arith_hard", "task.num_train=20", "task.num_test=5"])).task
    assert isinstance(hard, ArithTask) and (hard.min_steps, hard.max_steps, hard.max_operand) == (4, 6, 9)
    assert hard.shape == "chain"
    assert all(4 <= len(e.solution_steps) - 1 <= 6 for e in hard.examples("test"))


def test_chain_shape_is_left_deep():
    """shape=chain: every step combines the previous result with the question's next number."""
    from lrm_builtin.tasks.arith import ArithTask, parse_step

    task = ArithTask(shape="chain", min_steps=3, max_steps=5, min_operand=2, max_operand=30,
                     max_value=999, max_factor=9)
    exs = list(task.examples("test"))[:40]
    assert exs
    for ex in exs:
        q = ex.problem.question.rstrip("=")
        nums = [int(x) for x in __import__("re").findall(r"\d+", q)]
        steps = [parse_step(s) for s in ex.solution_steps[:-1]]
        assert all(s is not None for s in steps), ex.solution_steps
        # first step uses the first two numbers, then (previous result, next number)
        assert (steps[0][0], steps[0][2]) == (nums[0], nums[1])
        for prev, cur, n in zip(steps, steps[1:], nums[2:]):
            assert cur[0] == prev[3] and cur[2] == n
        assert task.grade(ex, task.step.join_steps(ex.solution_steps))
        assert all(0 <= s[3] <= 999 for s in steps)
    with pytest.raises(ValueError, match="shape"):
        ArithTask(shape="tree")
