"""A corpus of user mistakes, each run through the real `lrm` command in a subprocess.

Every case must end with exit code 2, exactly one line on stderr (``lrm <verb>: ...``) that
names the field or file, the value and what is allowed, and no traceback anywhere. Mistakes in
the configuration fail when it is composed (lrm_engine/validation.py), so those cases need no
model; the cases about model folders, devices and the output folder fail where the thing is
built or loaded.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DEFAULT_POLICY = Path(os.environ.get("LRM_CACHE", "/work/lrm_cache")) / "default" / "policy"

SEARCH = ["search", "task=arith", "policy=hf", "search=greedy", "kernels=reference"]
BEAM = ["search", "task=arith", "policy=hf", "reward=prm_token", "search=beam", "kernels=reference"]


def lrm(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "lrm_engine", *args], capture_output=True,
                          text=True, env=full, timeout=300, cwd=REPO)


def assert_one_line(r: subprocess.CompletedProcess[str], *expected: str) -> str:
    """Exit 2, one stderr line holding every ``expected`` text, nothing on stdout, no traceback."""
    assert "Traceback" not in r.stdout + r.stderr, r.stderr[-3000:]
    assert r.returncode == 2, (r.returncode, r.stderr[-3000:])
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    for text in expected:
        assert text in lines[0], lines[0]
    assert r.stdout == ""
    return lines[0]


# --------------------------------------------------------------------- at compose time (no model)

COMPOSE_CASES = [
    # zero / negative budgets
    (["search", "task=arith", "policy=hf", "search=majority", "search.n=0"],
     "lrm search: search.n=0: must be an integer >= 1"),
    (BEAM + ["search.beam_width=0"], "search.beam_width=0: must be an integer >= 1"),
    (["search", "task=arith", "policy=hf", "reward=prm_token", "search=mcts", "search.simulations=0"],
     "search.simulations=0: must be an integer >= 1"),
    (SEARCH + ["policy.max_step_tokens=0"], "policy.max_step_tokens=0: must be an integer >= 1"),
    (SEARCH + ["search_run.batch_size=0"], "search_run.batch_size=0: must be an integer >= 1"),
    (SEARCH + ["search_run.batch_size=-2"], "search_run.batch_size=-2: must be an integer >= 1"),
    (SEARCH + ["search_run.batch_size=abc"], "search_run.batch_size=abc: must be an integer >= 1"),
    (SEARCH + ["search_run.limit=-1"], "search_run.limit=-1: must be null or an integer >= 1"),
    (SEARCH + ["search_run.max_steps=0"], "search_run.max_steps=0: must be an integer >= 1"),
    (SEARCH + ["search_run.max_steps=-1"], "search_run.max_steps=-1: must be an integer >= 1"),
    (SEARCH + ["runtime.num_threads=-1"], "runtime.num_threads=-1: must be an integer >= 0"),
    (SEARCH + ["policy.kv_budget_mb=-1"], "policy.kv_budget_mb=-1.0: must be a number > 0"),
    (BEAM + ["reward.kv_budget_mb=0"], "reward.kv_budget_mb=0.0: must be a number > 0"),
    # sampling knobs
    (SEARCH + ["policy.sampling.temperature=0"], "policy.sampling.temperature=0.0: must be a number > 0"),
    (SEARCH + ["policy.sampling.temperature=-1"], "policy.sampling.temperature=-1.0: must be a number > 0"),
    (SEARCH + ["policy.sampling.temperature=nan"], "policy.sampling.temperature=nan: must be a number > 0"),
    (SEARCH + ["policy.sampling.top_p=0"], "policy.sampling.top_p=0.0: must be a number in (0, 1]"),
    (SEARCH + ["policy.sampling.top_p=1.5"], "policy.sampling.top_p=1.5: must be a number in (0, 1]"),
    (SEARCH + ["policy.sampling.top_k=-3"], "policy.sampling.top_k=-3: must be an integer >= 0"),
    # names the component does not take, options that do not exist
    (SEARCH + ["+search.bogus=1"], "search.bogus=1: unknown key; keys of search (greedy): name"),
    (BEAM + ["+search.bogus=1"], "search.bogus=1: unknown key; keys of search (beam): name, n, beam_width, choice"),
    (SEARCH + ["+policy.sampling.seeds=1"], "policy.sampling.seeds=1: unknown key; keys of policy.sampling: "
                                            "temperature, top_p, top_k, seed"),
    (SEARCH + ["search.nn=3"], "search.nn=3: unknown key 'nn'; keys of search: name"),
    (["search", "task=arith", "policy=hf", "search=bogus"],
     "lrm search: search=bogus: unknown option of search; options: beam, best_of_n, compute_optimal"),
    (["search", "task=arith", "policy=nope", "search=greedy"], "policy=nope: unknown option of policy; options: hf, tree"),
    (["search", "tsk=arith"], "tsk=arith: 'tsk' is neither a config group nor a key; groups: task, policy"),
    (SEARCH + ["runtime.seed=abc"], "runtime.seed=abc: value 'abc' of type 'str' could not be converted to Integer"),
    (SEARCH + ["runtime.device=gpu"], "runtime.device=gpu: invalid value 'gpu', expected one of [auto, cpu, cuda]"),
    (SEARCH + ["policy.device=gpu"], "policy.device=gpu: must be cpu, cuda or cuda:<index>"),
    (SEARCH + ["search_run.split=dev"], "search_run.split=dev: task arith has no such split; splits: train, test"),
    (SEARCH + ["search_run.aggregation=max"], "search_run.aggregation=max: must be one of min, prod, last, mean"),
    (SEARCH + ["runtime.seed=1,2"], "runtime.seed=1,2: several values sweep only with --multirun (-m)"),
    (SEARCH + ["task.min_steps=5", "task.max_steps=2"], "task.min_steps=5: must be <= task.max_steps (2)"),
    (["annotate", "task=arith", "policy=hf", "annotate=mc_rollout", "annotate.num_rollouts=0"],
     "lrm annotate: annotate.num_rollouts=0: must be an integer >= 1"),
    (["train", "task=arith", "objective=sft", "objective.train.lr=0"],
     "lrm train: objective.train.lr=0.0: must be a number > 0"),
    (["run", "pipeline.sweep_n=[1,0]"], "lrm run: pipeline.sweep_n=[1,0]: must be a non-empty list whose items must be an integer >= 1"),
    # checked when the run starts (lrm_engine/pipeline.py), before any stage
    (["run", "stage=bogus"], "lrm run: stage='bogus' is not a stage of `lrm run`; stages: sft, warmup, annotate"),
]


@pytest.mark.parametrize("args,expected", COMPOSE_CASES, ids=[" ".join(a[-1:]) for a, _ in COMPOSE_CASES])
def test_config_mistakes_end_in_one_line(args, expected, tmp_path):
    assert_one_line(lrm(*args, f"runtime.output_dir={tmp_path / 'out'}"), expected)


# --------------------------------------------------------------------- where things are built


def test_runtime_device_cuda_without_cuda_is_an_error(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    r = lrm(*SEARCH, "runtime.device=cuda", f"runtime.output_dir={tmp_path}")
    assert_one_line(r, "lrm search: runtime.device=cuda: CUDA is not available", "use cpu")


def test_policy_device_cuda_without_cuda_is_an_error(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    r = lrm(*SEARCH, "policy.device=cuda", f"runtime.output_dir={tmp_path}")
    assert_one_line(r, "policy.device=cuda: CUDA is not available")


def test_output_dir_that_is_a_file(tmp_path):
    f = tmp_path / "afile"
    f.write_text("mine")
    assert_one_line(lrm(*SEARCH, f"runtime.output_dir={f}"),
                    f"runtime.output_dir={f}: is a file, not a folder")
    assert f.read_text() == "mine"
    assert_one_line(lrm(*SEARCH, f"runtime.output_dir={f}/sub"),
                    f"runtime.output_dir={f}/sub: is not a writable folder (Not a directory)")


def test_output_dir_that_cannot_be_written(tmp_path):
    # /proc refuses new folders whoever we are (permission bits would not stop root)
    assert_one_line(lrm(*SEARCH, "runtime.output_dir=/proc/lrm_out"),
                    "runtime.output_dir=/proc/lrm_out: is not a writable folder")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    from lrm_engine.models.loading import save_tiny_llama

    return save_tiny_llama(tmp_path_factory.mktemp("m") / "tiny", hidden_size=32, num_layers=1,
                           num_heads=2, num_kv_heads=1, intermediate_size=32)


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_model_path_that_is_a_file(tiny_model, tmp_path):
    r = lrm(*SEARCH, f"policy.path={tiny_model / 'config.json'}", f"runtime.output_dir={tmp_path / 'o'}")
    assert_one_line(r, f"model path `{tiny_model / 'config.json'}` is a file, not a folder")


def test_model_path_that_does_not_exist(tmp_path):
    r = lrm(*SEARCH, f"policy.path={tmp_path / 'nope'}", f"runtime.output_dir={tmp_path / 'o'}")
    assert_one_line(r, f"model path `{tmp_path / 'nope'}` does not exist")


def test_garbage_config_json(tiny_model, tmp_path):
    d = _copy(tiny_model, tmp_path / "m")
    (d / "config.json").write_text("{not json")
    r = lrm(*SEARCH, f"policy.path={d}", f"runtime.output_dir={tmp_path / 'o'}")
    assert_one_line(r, f"`{d / 'config.json'}` is not valid JSON")


def test_garbage_safetensors(tiny_model, tmp_path):
    d = _copy(tiny_model, tmp_path / "m")
    (d / "model.safetensors").write_bytes(os.urandom(2048))
    r = lrm(*SEARCH, f"policy.path={d}", f"runtime.output_dir={tmp_path / 'o'}")
    assert_one_line(r, f"`{d / 'model.safetensors'}` is not a readable safetensors file")


def test_pickle_weights_need_the_opt_in(tiny_model, tmp_path):
    import torch
    from safetensors.torch import load_file

    d = _copy(tiny_model, tmp_path / "m")
    torch.save(load_file(str(d / "model.safetensors")), d / "pytorch_model.bin")
    (d / "model.safetensors").unlink()
    out = tmp_path / "o"
    r = lrm(*SEARCH, f"policy.path={d}", f"runtime.output_dir={out}")
    assert_one_line(r, f"`{d}` holds only pickle weights (pytorch_model.bin)", "policy.allow_pickle=true")
    ok = lrm(*SEARCH, f"policy.path={d}", "policy.allow_pickle=true", "search_run.limit=1",
             "search_run.max_steps=1", "policy.max_step_tokens=2", "runtime.progress=false",
             f"runtime.output_dir={out}")
    assert ok.returncode == 0, ok.stderr[-3000:]
    assert json.loads(ok.stdout.strip().splitlines()[-1])["problems"] == 1


def test_an_empty_split_is_an_error_not_nan(tmp_path):
    d = tmp_path / "gsm8k"
    d.mkdir()
    (d / "test.jsonl").write_text("\n")
    r = lrm("search", "task=gsm8k", f"task.path={d}", "policy=hf", "search=greedy",
            f"runtime.output_dir={tmp_path / 'o'}")
    assert_one_line(r, "gsm8k: split 'test' has no usable example in", "test.jsonl")


def test_a_split_file_that_is_missing(tmp_path):
    r = lrm("search", "task=gsm8k", f"task.path={tmp_path / 'none'}", "policy=hf", "search=greedy",
            f"runtime.output_dir={tmp_path / 'o'}")
    assert_one_line(r, "gsm8k: data file not found:", "task.path=")


def test_processbench_predictions_that_are_missing(tmp_path):
    r = lrm("evaluate", "task=processbench", f"task.predictions={tmp_path / 'p.jsonl'}",
            f"runtime.output_dir={tmp_path / 'o'}")
    assert_one_line(r, "processbench: predictions file not found")


# --------------------------------------------------------------------- data files (in process)
#
# One line that is not UTF-8 text (a binary blob, a Latin-1 line) in a data file is skipped,
# counted and reported as `file:line: not UTF-8 text (...)`, like a malformed JSON line; the
# good lines around it are all kept.

BINARY_LINE = b"\x00\xff\xfe\x9c binary \x80\n"
LATIN1_LINE = '{"question": "caf\xe9?", "answer": "#### 1"}\n'.encode("latin-1")


def _write_lines(path: Path, lines: list[bytes]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(lines))
    return path


def test_read_lines_reports_undecodable_lines_and_drops_a_bom(tmp_path):
    from lrm_engine.textlines import read_lines

    f = _write_lines(tmp_path / "x.txt", ["\ufeffa\n".encode(), BINARY_LINE, b"c"])
    assert list(read_lines(f)) == [(1, "a\n", None),
                                   (2, None, "not UTF-8 text (byte 0xff at column 2)"),
                                   (3, "c", None)]


def test_gsm8k_split_with_binary_lines(tmp_path, caplog):
    import logging

    from lrm_builtin.tasks import Gsm8kTask

    good = json.dumps({"question": "1+1?", "answer": "1+1=2\n#### 2"}).encode() + b"\n"
    f = _write_lines(tmp_path / "gsm8k" / "test.jsonl", [good, BINARY_LINE, LATIN1_LINE, good])
    t = Gsm8kTask(path=str(tmp_path / "gsm8k"))
    with caplog.at_level(logging.WARNING, logger="lrm_engine.tasks"):
        exs = list(t.examples("test"))
    assert [e.problem.id for e in exs] == ["gsm8k-test-0", "gsm8k-test-3"]
    assert t.skipped_lines == 2
    assert [(ln, why) for _, ln, why in t._stats["test"].skipped] == [
        (2, "not UTF-8 text (byte 0xff at column 2)"),
        (3, "not UTF-8 text (byte 0xe9 at column 18)")]
    assert f"{f}:2: skipped malformed line: not UTF-8 text" in caplog.text
    assert f"{f}:3: skipped malformed line: not UTF-8 text" in caplog.text


def test_prm_jsonl_with_a_binary_line(tmp_path):
    from lrm_engine.train.prm_data import load_prm_jsonl

    good = json.dumps({"prompt": "1+2=\n", "completions": ["1+2=3", "Answer: 3"],
                       "labels": [True, True]}).encode() + b"\n"
    f = _write_lines(tmp_path / "prm.jsonl", [good, BINARY_LINE, good])
    rep = load_prm_jsonl(f)
    assert len(rep.records) == 2 and rep.skipped == 1
    assert rep.errors == [f"{f}:2: not UTF-8 text (byte 0xff at column 2)"]


def test_processbench_predictions_with_a_binary_line(tmp_path, caplog):
    import logging

    from lrm_builtin.tasks.processbench import ProcessBenchTask

    f = _write_lines(tmp_path / "p.jsonl", [b'{"id": "gsm8k-0", "prediction": -1}\n', BINARY_LINE,
                                            b'{"id": "gsm8k-1", "prediction": 2}\n'])
    t = ProcessBenchTask(subsets=["gsm8k"])
    with caplog.at_level(logging.WARNING, logger="lrm_engine.tasks"):
        preds = t.read_predictions(f)
    assert preds == {"gsm8k-0": -1, "gsm8k-1": 2}
    assert t.skipped_lines == 1 and f"{f}:2: skipped malformed line: not UTF-8 text" in caplog.text


def test_annotate_input_file_with_a_binary_line(tmp_path):
    from lrm_builtin.annotators.omegaprm import OmegaPRMAnnotator

    bad_question = '{"id": "b", "question": "caf\xe9"}\n'.encode("latin-1")
    f = _write_lines(tmp_path / "in.jsonl", [b'{"id": "a", "question": "qa", "reference": "1"}\n',
                                             bad_question, BINARY_LINE,
                                             b'{"id": "c", "question": "qc", "reference": "2"}\n'])
    ann = OmegaPRMAnnotator(num_rollouts=3, input_file=str(f))
    exs, errors = ann.read_input()
    assert [e.problem.id for e in exs] == ["a", "c"]  # "b" is not kept with mangled text
    assert sorted(errors) == [f"{f}:2: not UTF-8 text (byte 0xe9 at column 29)",
                              f"{f}:3: not UTF-8 text (byte 0xff at column 2)"]
    assert ann.stats["malformed_input"] == 2


# --------------------------------------------------------------------- model output (graders)
#
# Grading never raises on what a model wrote: a number past Python's 4,300-digit int(str) limit
# is graded wrong (counted), the warning shows the text cut, and an answer followed by an
# end-of-turn token is read as the answer.

HUGE = "9" * 5000  # int(HUGE) raises ValueError (sys.get_int_max_str_digits() == 4300)


@pytest.fixture(scope="module")
def gsm8k_task(tmp_path_factory):
    from lrm_builtin.tasks import Gsm8kTask

    d = tmp_path_factory.mktemp("g") / "gsm8k"
    _write_lines(d / "test.jsonl", [json.dumps({"question": "Q?", "answer": "9+9=18\n#### 18"}).encode()])
    t = Gsm8kTask(path=str(d))
    return t, next(iter(t.examples("test")))


@pytest.fixture(scope="module")
def math_task(tmp_path_factory):
    from lrm_builtin.tasks import Math500Task

    d = tmp_path_factory.mktemp("m") / "math500"
    _write_lines(d / "test.jsonl", [json.dumps({"problem": "Q?", "solution": "so \\boxed{\\frac{1}{2}}",
                                                "answer": "\\frac{1}{2}", "unique_id": "u1"}).encode()])
    t = Math500Task(path=str(d))
    return t, next(iter(t.examples("test")))


@pytest.mark.parametrize("end", ["<|im_end|>", "<eos>", "</s>", "<|eot_id|>", "<|endoftext|>"])
def test_an_answer_before_an_end_of_turn_token_is_graded_right(gsm8k_task, math_task, end):
    from lrm_builtin.tasks import ArithTask

    t, ex = gsm8k_task
    assert t.grade(ex, f"9+9=18\nThe answer is: 18{end}")
    assert t.grade(ex, f"9+9=18\n#### 18{end}")
    assert not t.grade(ex, f"9+9=17\n#### 17{end}")
    m, mex = math_task
    assert m.grade(mex, f"The answer is: \\frac{{1}}{{2}}{end}")
    assert m.grade(mex, f"so \\boxed{{0.5}}{end}")
    a = ArithTask(num_test=1, seed=0)
    aex = next(iter(a.examples("test")))
    assert a.grade(aex, f"{aex.solution_steps[-1]}{end}")
    assert a.step_labels(aex, list(aex.solution_steps[:-1]) + [aex.solution_steps[-1] + end])[-1]


def test_a_number_past_the_int_digit_limit_is_graded_wrong_not_raised(gsm8k_task, math_task, caplog):
    import logging

    from lrm_builtin.tasks import ArithTask
    from lrm_builtin.tasks.grading import grading_issues, math_equal, math_equal_many

    with pytest.raises(ValueError):  # what the graders used to hit
        int(HUGE)
    before = grading_issues().get("too_long", 0)
    t, ex = gsm8k_task
    m, mex = math_task
    a = ArithTask(num_test=1, seed=0)
    aex = next(iter(a.examples("test")))
    with caplog.at_level(logging.WARNING, logger="lrm_engine.tasks"):
        assert t.grade(ex, f"#### {HUGE}") is False
        assert t.grade(ex, f"The answer is {HUGE}<|im_end|>") is False
        assert m.grade(mex, f"\\boxed{{{HUGE}}}") is False
        assert math_equal(HUGE, HUGE) is False and math_equal_many([(HUGE, "18"), ("18", "18")]) == [False, True]
        assert a.grade(aex, f"Answer: {HUGE}") is False
        assert a.step_labels(aex, [f"1+2={HUGE}"]) == [False]
    assert grading_issues()["too_long"] - before == 5  # gsm8k x2, math, math_equal, math_equal_many
    warned = [r.getMessage() for r in caplog.records if "graded wrong without parsing" in r.getMessage()]
    assert len(warned) == 5
    assert all(len(w) < 400 and "(5000 chars)" in w for w in warned)  # the text is cut
