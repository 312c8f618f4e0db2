"""GSM8K and MATH-500 tasks: data loading, prompts, answer extraction, math-verify grading."""

from __future__ import annotations

import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from lrm_builtin.tasks import Gsm8kTask, Math500Task
from lrm_builtin.tasks._data import DataNotFoundError, find_data_root
from lrm_builtin.tasks.grading import _POOL, _mv_equal, as_number, extract_boxed, math_equal, math_equal_many
from lrm_builtin.tasks.gsm8k import gsm8k_reference

HAVE_DATA = find_data_root() is not None and (find_data_root() / "gsm8k" / "test.jsonl").is_file()
needs_data = pytest.mark.skipif(not HAVE_DATA, reason="../shared/data not found (set LRM_DATA)")


# ---------------------------------------------------------------- extraction


def test_extract_boxed_nested():
    text = r"first \boxed{1} then \boxed{\frac{\sqrt{2}}{2}} and finally \boxed{\left( 3, \frac{\pi}{2} \right)}."
    assert extract_boxed(text) == r"\left( 3, \frac{\pi}{2} \right)"
    assert extract_boxed(r"\boxed{\{1,2\}}") == r"\{1,2\}"
    assert extract_boxed(r"so \fbox{7}") == "7"
    assert extract_boxed(r"\boxed 5 apples") == "5"
    assert extract_boxed(r"\boxed{unclosed {") is None
    assert extract_boxed("no box") is None


def test_as_number():
    assert as_number("1,450,000") == 1450000
    assert as_number("$18") == 18
    assert as_number("7.50") == as_number("7.5")
    assert as_number(r"\frac{3}{4}") == as_number("0.75")
    assert as_number("25%") == 25
    assert as_number("12,34") is None  # not a thousands separator
    assert as_number("x+1") is None


def test_gsm8k_reference():
    assert gsm8k_reference("a\nb\n#### 1,450,000") == "1450000"
    assert gsm8k_reference("#### -3") == "-3"
    with pytest.raises(ValueError):
        gsm8k_reference("no final line")


# ---------------------------------------------------------------- GSM8K


@needs_data
def test_gsm8k_loads_hand_checked():
    t = Gsm8kTask()
    test = list(t.examples("test"))
    assert len(test) == 1319 and len(list(t.examples("train"))) == 7473  # SOURCES.md
    assert t.skipped_lines == 0
    ex = test[0]
    assert ex.problem.id == "gsm8k-test-0"
    assert ex.problem.question.startswith("Janet\u2019s ducks lay 16 eggs per day.")
    assert ex.reference == "18"
    assert ex.solution_steps == (
        "Janet sells 16 - 3 - 4 = 9 duck eggs a day.",
        "She makes 9 * 2 = $18 every day at the farmer\u2019s market.",
        "#### 18",
    )
    kept = Gsm8kTask(keep_calculator_annotations=True, limit=1)
    assert next(kept.examples("test")).solution_steps[0] == "Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 duck eggs a day."
    assert len(list(Gsm8kTask(limit=5).examples("test"))) == 5


@needs_data
@pytest.mark.parametrize(
    "solution, ok",
    [
        ("16-3-4=9\n9*2=18\n#### 18", True),
        ("#### 18.00", True),
        ("#### $18", True),
        ("She makes $18.\nThe answer is 18.", True),
        (r"So she makes \boxed{18} dollars.", True),
        ("She makes 9 * 2 = 18", True),  # last-number fallback
        ("#### 17", False),
        ("#### 18\n#### 19", False),  # the last answer line counts
        ("no idea", False),
        ("", False),
    ],
)
def test_gsm8k_grade(solution, ok):
    t = Gsm8kTask(limit=1)
    assert t.grade(next(t.examples("test")), solution) is ok


@needs_data
def test_gsm8k_prompts_plain_and_chat():
    t = Gsm8kTask(limit=1)
    p = next(t.examples("test")).problem
    assert t.prompt(p) == f"Question: {p.question}\nAnswer:\n"
    c = Gsm8kTask(limit=1, prompt_style="chat", system_prompt="Be brief.", prompt_template="Q: {question}")
    assert c.messages(p) == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": f"Q: {p.question}"}]
    assert c.prompt(p) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        f"<|im_start|>user\nQ: {p.question}<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    with pytest.raises(ValueError, match="prompt_style"):
        Gsm8kTask(prompt_style="fancy")


# ---------------------------------------------------------------- MATH-500


@needs_data
def test_math500_loads_hand_checked():
    t = Math500Task()
    exs = list(t.examples("test"))
    assert len(exs) == 500 and t.skipped_lines == 0
    ex = exs[0]
    assert ex.reference == r"\left( 3, \frac{\pi}{2} \right)"
    assert ex.problem.id == "test/precalculus/807.json"
    assert ex.problem.meta["subject"] == "Precalculus" and ex.problem.meta["level"] == 2
    assert "reference" not in ex.problem.meta and "answer" not in ex.problem.meta
    assert t.prompt(ex.problem) == f"Problem: {ex.problem.question}\nSolution:\n"
    with pytest.raises(ValueError, match="unknown split"):
        t.examples("train")


@needs_data
@pytest.mark.parametrize(
    "solution, ok",
    [
        (r"Thus the point is $\boxed{\left( 3, \frac{\pi}{2} \right)}$.", True),
        (r"$r=3$, so \boxed{(3, \pi/2)}", True),  # equivalent, not identical: math-verify
        (r"\boxed{(3,\frac{\pi}{2})}", True),
        (r"\boxed{(2, \pi/2)}", False),
        (r"\boxed{(3, \pi)}", False),
        ("Answer: (3, \\pi/2)", True),  # no box: the answer prefix
        ("I give up.", False),
    ],
)
def test_math500_grade(solution, ok):
    t = Math500Task(limit=1)
    assert t.grade(next(t.examples("test")), solution) is ok


def test_math_equal_equivalences():
    assert math_equal(r"\dfrac{14}{3}", r"\frac{14}{3}")
    assert math_equal("14/3", r"\frac{14}{3}")
    assert not math_equal("4.67", r"\frac{14}{3}")
    assert math_equal(r"\sqrt{117}", r"3\sqrt{13}")
    assert math_equal("90", r"90^\circ")
    assert not math_equal("q-p", "p - q")
    assert not math_equal(None, "1")


# ---------------------------------------------------------------- gold answers grade correct


def _report(name, task, fails, total):
    print(f"\n{name}: {total - len(fails)}/{total} gold answers grade correct against themselves")
    for f in fails:
        print("  FAIL", f)


@needs_data
def test_every_gold_answer_grades_correct():
    """Every gold solution, graded through the task, and every reference through math-verify
    itself (no exact-string or numeric shortcut), against the reference."""
    results = {}
    for name, task in (("gsm8k test", Gsm8kTask()), ("math500", Math500Task())):
        exs = list(task.examples("test"))
        fails = [(e.problem.id, task.extract_answer(task.gold_solution(e)), e.reference)
                 for e in exs if not task.grade(e, task.gold_solution(e))]
        # math-verify path only: parse(reference) equals parse(extracted gold answer)
        pairs = [(task.extract_answer(task.gold_solution(e)), e.reference) for e in exs]
        mv_fails = [(e.problem.id, p, r) for e, (p, r) in zip(exs, pairs) if not _mv_equal(p, r, 5)]
        _report(name + " (task.grade)", task, fails, len(exs))
        _report(name + " (math-verify only)", task, mv_fails, len(exs))
        results[name] = (len(exs), len(fails), len(mv_fails))
    for name, (n, f, mvf) in results.items():
        assert (n - f) / n >= 0.99, name
        assert (n - mvf) / n >= 0.99, name


@needs_data
def test_raw_math_solutions_grade_correct():
    """The unedited MATH-500 solution texts (not re-joined steps) grade correct too."""
    t = Math500Task()
    raw = [json.loads(line) for line in open(t.data_dir / "test.jsonl")]
    exs = list(t.examples("test"))
    fails = [e.problem.id for e, r in zip(exs, raw) if not t.grade(e, r["solution"])]
    _report("math500 raw solutions", t, fails, len(exs))
    assert len(fails) <= 5


# ---------------------------------------------------------------- threads and timeouts


@needs_data
def test_grading_off_the_main_thread():
    t = Math500Task(limit=40)
    exs = list(t.examples("test"))
    # Candidates that differ textually from the reference, so math-verify really runs.
    cands = [r"\boxed{(3, \pi/2)}", r"\boxed{(2, \pi/2)}"] + [rf"\boxed{{ {e.reference} }}" for e in exs[2:]]
    expected = [t.grade(e, c) for e, c in zip(exs, cands)]  # main thread: math-verify's alarms
    assert expected[0] is True and expected[1] is False
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda ec: (threading.current_thread() is threading.main_thread(), t.grade(*ec)),
                            zip(exs, cands)))
    assert not any(on_main for on_main, _ in got)
    assert [ok for _, ok in got] == expected
    assert sum(expected) >= len(exs) - 3


def test_off_thread_timeout_guard_works():
    """A comparison that hangs is cut off after the guard and counted wrong; grading goes on."""

    def hang():
        t0 = time.monotonic()
        res = _POOL.run(time.sleep, (60,), guard=1.0, default=False)
        return res, time.monotonic() - t0

    with ThreadPoolExecutor(1) as pool:
        res, dt = pool.submit(hang).result()
        assert res is False and dt < 10
        # the pool was rebuilt: off-thread grading still works
        assert pool.submit(math_equal, r"\frac{1}{2}", r"\dfrac{1}{2}").result() is True
        assert pool.submit(math_equal, r"\frac{1}{3}", r"\dfrac{1}{2}").result() is False


def test_math_equal_many():
    pairs = [("1,000", "1000"), (r"\frac12", "0.5"), ("x", "y"), (None, "1"), (r"\pi", r"\pi")]
    assert math_equal_many(pairs) == [True, True, False, False, True]


# ---------------------------------------------------------------- data files


def _write(p: Path, lines):
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


GOOD = json.dumps({"question": "1+1?", "answer": "1+1=<<1+1=2>>2\n#### 2"})


def test_malformed_lines_reported_and_counted(tmp_path, caplog):
    f = tmp_path / "gsm8k" / "test.jsonl"
    _write(f, [GOOD, "{not json", "[1, 2]", "", json.dumps({"question": "q"}),
               json.dumps({"question": "q", "answer": "no final line"}), GOOD])
    t = Gsm8kTask(path=str(tmp_path / "gsm8k"))
    with caplog.at_level(logging.WARNING, logger="lrm_engine.tasks"):
        exs = list(t.examples("test"))
    assert len(exs) == 2
    assert t.skipped_lines == 4  # lines 2, 3, 5, 6 (line 4 is blank: ignored)
    assert [ln for _, ln, _ in t._stats["test"].skipped] == [2, 3, 5, 6]
    for ln in (2, 3, 5, 6):
        assert f"{f}:{ln}" in caplog.text
    assert exs[0].solution_steps == ("1+1=2", "#### 2")
    assert exs[1].problem.id == "gsm8k-test-6"  # ids follow the line, stable under skips


def test_missing_file_names_the_option(tmp_path):
    t = Gsm8kTask(path=str(tmp_path / "nowhere"))
    with pytest.raises(DataNotFoundError) as e:
        list(t.examples("test"))
    msg = str(e.value)
    assert "task.path" in msg and "LRM_DATA" in msg and "test.jsonl" in msg


def test_data_root_from_env_and_from_cwd(tmp_path, monkeypatch):
    _write(tmp_path / "env" / "gsm8k" / "test.jsonl", [GOOD])
    monkeypatch.setenv("LRM_DATA", str(tmp_path / "env"))
    assert len(list(Gsm8kTask().examples("test"))) == 1
    # no LRM_DATA: the nearest shared/data upward from the current directory
    monkeypatch.delenv("LRM_DATA")
    _write(tmp_path / "ws" / "shared" / "data" / "gsm8k" / "test.jsonl", [GOOD, GOOD, GOOD])
    deep = tmp_path / "ws" / "clone" / "sub"
    deep.mkdir(parents=True)
    monkeypatch.chdir(deep)
    assert find_data_root() == tmp_path / "ws" / "shared" / "data"
    assert len(list(Gsm8kTask().examples("test"))) == 3
