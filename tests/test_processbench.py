"""ProcessBench evaluator on the real data: oracle, trivial and hand-computed predictors."""

from __future__ import annotations

import json
import logging
from fractions import Fraction

import pytest

from lrm_builtin.tasks._data import find_data_root
from lrm_builtin.tasks.processbench import (
    SUBSETS,
    ProcessBenchTask,
    compute_metrics,
    f1_score,
    prediction_from_scores,
)

HAVE_DATA = find_data_root() is not None and (find_data_root() / "processbench" / "gsm8k.json").is_file()
needs_data = pytest.mark.skipif(not HAVE_DATA, reason="../shared/data not found (set LRM_DATA)")

# From ../shared/data/SOURCES.md: records, label == -1, final_answer_correct == true.
COUNTS = {"gsm8k": (400, 193, 200), "math": (1000, 406, 500),
          "olympiadbench": (1000, 339, 500), "omnimath": (1000, 241, 500)}


def pct(x: Fraction) -> float:
    return float(100 * x)


def _write(path, preds):
    with open(path, "w") as f:
        for pid, p in preds.items():
            f.write(json.dumps({"id": pid, "prediction": p}) + "\n")
    return str(path)


@pytest.fixture(scope="module")
def task():
    return ProcessBenchTask()


# ---------------------------------------------------------------- pure metric functions


def test_metrics_hand_computed():
    # (label, prediction): erroneous samples 3 (1 and 0 right, 2 wrong): 2/3;
    # correct samples 2 (one predicted -1): 1/2; F1 = 2*(2/3)*(1/2)/(2/3+1/2) = 4/7.
    m = compute_metrics([(-1, -1), (-1, 2), (1, 1), (2, 1), (0, 0)])
    assert m["error_acc"] == pytest.approx(pct(Fraction(2, 3)))
    assert m["correct_acc"] == pytest.approx(50.0)
    assert m["f1"] == pytest.approx(pct(Fraction(4, 7)))
    assert (m["n_error"], m["n_correct"]) == (3, 2)
    assert f1_score(0.0, 0.0) == 0.0


def test_prediction_from_scores():
    assert prediction_from_scores([0.9, 0.4, 0.1], 0.5) == 1
    assert prediction_from_scores([0.9, 0.8], 0.5) == -1
    assert prediction_from_scores([0.2], 0.1) == -1
    assert prediction_from_scores([], 0.5) == -1


# ---------------------------------------------------------------- the real data


@needs_data
def test_data_matches_sources(task):
    for s, (n, n_correct, n_final) in COUNTS.items():
        items = task.items(s)
        assert len(items) == n
        assert sum(it.label == -1 for it in items) == n_correct
        assert sum(it.final_answer_correct for it in items) == n_final
        assert all(-1 <= it.label < len(it.steps) for it in items)
    ex = next(task.examples("gsm8k"))
    assert "label" not in ex.problem.meta and isinstance(ex.problem.meta["steps"], tuple)
    assert task.grade(ex, ex.reference) and not task.grade(ex, "99")


@needs_data
def test_oracle_predictions_score_100(task, tmp_path):
    preds = {it.id: it.label for it in task.all_items()}
    res = task.metrics(task.read_predictions(_write(tmp_path / "oracle.jsonl", preds)))
    for s in SUBSETS:
        m = res["subsets"][s]
        assert (m["error_acc"], m["correct_acc"], m["f1"]) == (100.0, 100.0, 100.0)
    assert res["overall"]["f1"] == 100.0 and res["overall"]["avg_f1"] == 100.0
    assert res["missing"] == 0 and res["unknown_ids"] == 0


@needs_data
def test_always_minus_one(task):
    res = task.metrics({it.id: -1 for it in task.all_items()})
    for s, (n, n_correct, _) in COUNTS.items():
        m = res["subsets"][s]
        assert (m["error_acc"], m["correct_acc"], m["f1"]) == (0.0, 100.0, 0.0)
        assert (m["n_error"], m["n_correct"]) == (n - n_correct, n_correct)
    assert res["overall"]["avg_f1"] == 0.0


@needs_data
def test_outcome_only_predictor_hand_computed(task):
    """Predict -1 when the final answer is correct, else the true label.

    Every label == -1 sample has a correct final answer (checked below), so correct accuracy
    is 100%. Among erroneous samples (n - n_correct) those with a wrong final answer
    (n - n_final) are predicted right; the n_final - n_correct with a right answer but a wrong
    process are predicted -1, i.e. wrong. From SOURCES.md:
      gsm8k:         error acc 200/207, F1 = 2*(200/207)/(200/207+1) = 400/407
      math:          error acc 500/594, F1 = 1000/1094
      olympiadbench: error acc 500/661, F1 = 1000/1161
      omnimath:      error acc 500/759, F1 = 1000/1259
      pooled:        error acc 1700/2221, F1 = 3400/3921
    """
    items = task.all_items()
    assert all(it.final_answer_correct for it in items if it.label == -1)
    preds = {it.id: (-1 if it.final_answer_correct else it.label) for it in items}
    res = task.metrics(preds)
    hand = {"gsm8k": (Fraction(200, 207), Fraction(400, 407)),
            "math": (Fraction(500, 594), Fraction(1000, 1094)),
            "olympiadbench": (Fraction(500, 661), Fraction(1000, 1161)),
            "omnimath": (Fraction(500, 759), Fraction(1000, 1259))}
    for s, (ea, f1) in hand.items():
        m = res["subsets"][s]
        assert m["error_acc"] == pytest.approx(pct(ea))
        assert m["correct_acc"] == 100.0
        assert m["f1"] == pytest.approx(pct(f1))
    assert res["overall"]["error_acc"] == pytest.approx(pct(Fraction(1700, 2221)))
    assert res["overall"]["f1"] == pytest.approx(pct(Fraction(3400, 3921)))
    assert res["overall"]["avg_f1"] == pytest.approx(sum(pct(f) for _, f in hand.values()) / 4)
    assert round(res["subsets"]["gsm8k"]["f1"], 2) == 98.28


@needs_data
def test_step_scores_and_subsets(tmp_path):
    t = ProcessBenchTask(subsets=["gsm8k"], threshold=0.5)
    lines = []
    for it in t.items("gsm8k"):
        scores = [0.9] * len(it.steps)
        if it.label >= 0:
            scores[it.label] = 0.1
        lines.append(json.dumps({"id": it.id, "step_scores": scores}))
    f = tmp_path / "scores.jsonl"
    f.write_text("\n".join(lines) + "\n")
    res = t.metrics(t.read_predictions(f))
    assert res["subsets"]["gsm8k"]["f1"] == 100.0 and list(res["subsets"]) == ["gsm8k"]
    # a higher threshold flags every 0.9 step: all predictions become 0
    res = ProcessBenchTask(subsets=["gsm8k"], threshold=0.95).metrics(
        ProcessBenchTask(subsets=["gsm8k"], threshold=0.95).read_predictions(f))
    m = res["subsets"]["gsm8k"]
    assert m["correct_acc"] == 0.0 and m["error_acc"] == pytest.approx(100 * 37 / 207)  # 37 labels == 0


@needs_data
def test_missing_and_malformed_predictions(tmp_path, caplog):
    t = ProcessBenchTask(subsets=["gsm8k"])
    items = t.items("gsm8k")
    f = tmp_path / "p.jsonl"
    good = [json.dumps({"id": it.id, "prediction": it.label}) for it in items[:-1]]
    f.write_text("\n".join(good[:3] + ["{oops", json.dumps({"id": "x", "prediction": "two"}),
                                       json.dumps({"prediction": 1})] + good[3:]) + "\n")
    with caplog.at_level(logging.WARNING, logger="lrm_engine.tasks"):
        preds = t.read_predictions(f)
    assert t.skipped_lines == 3
    for ln in (4, 5, 6):
        assert f"{f}:{ln}" in caplog.text
    with pytest.raises(ValueError, match="1 sample"):
        t.metrics(preds)
    t2 = ProcessBenchTask(subsets=["gsm8k"], on_missing="wrong")
    res = t2.metrics(preds)
    assert res["missing"] == 1
    last = items[-1]
    n_err, n_cor = 207, 193
    if last.label == -1:
        assert res["subsets"]["gsm8k"]["correct_acc"] == pytest.approx(100 * (n_cor - 1) / n_cor)
    else:
        assert res["subsets"]["gsm8k"]["error_acc"] == pytest.approx(100 * (n_err - 1) / n_err)
    with pytest.raises(FileNotFoundError, match="task.predictions"):
        t.read_predictions(tmp_path / "absent.jsonl")


@needs_data
def test_evaluate_from_config(tmp_path, capsys):
    composition = pytest.importorskip("lrm_engine.composition")
    components = pytest.importorskip("lrm_engine.components")
    t = ProcessBenchTask()
    preds = _write(tmp_path / "oracle.jsonl", {it.id: it.label for it in t.all_items()})
    out = tmp_path / "metrics.json"
    cfg = composition.compose(["task=processbench", f"task.predictions={preds}", f"task.output={out}"])
    task = components.build(cfg).task
    res = task.evaluate(cfg)
    assert res["avg_f1"] == 100.0 and res["olympiadbench/f1"] == 100.0 and res["pooled/n_error"] == 2221
    assert all(isinstance(v, (int, float)) for v in res.values())
    printed = capsys.readouterr().err
    assert "olympiadbench" in printed and "avg F1" in printed
    assert json.loads(out.read_text())["overall"]["f1"] == 100.0
    with pytest.raises(ValueError, match="task.predictions"):
        ProcessBenchTask().evaluate(None)


@needs_data
def test_lrm_evaluate_command(tmp_path):
    """``lrm evaluate task=processbench task.predictions=<file>`` end to end (a subprocess)."""
    import subprocess
    import sys

    pytest.importorskip("lrm_engine.cli")
    t = ProcessBenchTask()
    preds = _write(tmp_path / "minus1.jsonl", {it.id: -1 for it in t.all_items()})
    r = subprocess.run([sys.executable, "-m", "lrm_engine", "evaluate", "task=processbench",
                        f"task.predictions={preds}"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    last = json.loads(r.stdout.strip().splitlines()[-1])
    assert last["avg_f1"] == 0.0 and last["gsm8k/correct_acc"] == 100.0 and last["math/error_acc"] == 0.0
    assert "avg F1 (paper)" in r.stderr
