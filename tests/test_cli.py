"""The `lrm` command: verbs, errors (exit code 2, no traceback), multirun, plugins listing."""

import json
import re
import shutil

import pytest

from conftest import run_lrm
from lrm_engine import cli
from lrm_engine.registry import PUBLIC_KINDS


def test_lrm_script_is_installed():
    assert shutil.which("lrm"), "the `lrm` console script is not on PATH (pip install -e .)"


@pytest.mark.parametrize("args,expect", [
    (["config", "kernels=nope"], "lrm config: kernels=nope: unknown option of kernels; "
                                 "options: auto, cpp, cuda, reference, triton"),
    (["config", "runtime.stepz=1"], "unknown key 'stepz'; keys of runtime: seed, device, output_dir"),
    (["config", "nogroup=x"], "'nogroup' is neither a config group nor a key; groups: task"),
    (["config", "runtime.seed=abc"], "runtime.seed=abc: "),
    (["search", "kernels=nope"], "lrm search: kernels=nope: unknown option of kernels"),
    (["config", "a b"], "'a b': not an override"),
    (["config", "runtime.seed=1,2"], "--multirun"),
])
def test_config_errors_exit_2_with_valid_choices_and_no_traceback(args, expect):
    r = run_lrm(*args)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert expect in r.stderr, r.stderr
    assert len(r.stderr.splitlines()) == 1, r.stderr  # one line
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("args,expect", [
    (["frobnicate"], "unknown verb 'frobnicate'"),
    (["run", "--frob"], "unknown option '--frob'"),
    (["plugins", "task=arith"], "takes no overrides"),
])
def test_usage_errors_exit_2(args, expect):
    r = run_lrm(*args)
    assert r.returncode == 2 and expect in r.stderr and "Traceback" not in r.stderr


def test_verbs_without_machinery_say_what_is_missing():
    """Every verb has landed; a verb module that is missing is reported as not available."""
    r = run_lrm("annotate", "kernels=reference", env={"LRM_ENGINE_DISABLE_PLUGINS": "builtin.annotators"})
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "not available yet:" in r.stderr
    assert "is registered (" in r.stderr or "is not implemented" in r.stderr
    assert r.stdout == ""  # never a fake result
    assert "Traceback" not in r.stderr


def test_not_available_check_is_data_driven(monkeypatch):
    """Register the missing components: only the missing verb module remains to report."""
    from lrm_engine.composition import compose
    from lrm_engine.plugin_manager import registries

    regs = registries()
    cfg = compose()
    monkeypatch.setattr(regs["policy"], "_entries", {})  # as if no policy plugin were installed
    with pytest.raises(cli.NotAvailableError) as e:
        cli.check_available("search", cfg)
    assert "no policy is registered (models issue)" in str(e.value)
    for kind in cli.VERB_NEEDS["search"]:
        if kind not in regs[kind] and len(regs[kind]) == 0:
            monkeypatch.setitem(regs[kind]._entries, "t_fake", object())
    monkeypatch.setattr(cli.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(cli.NotAvailableError) as e:
        cli.check_available("search", cfg)
    assert str(e.value) == "the `search` verb is not implemented (lrm_engine/verbs/search.py)"


def test_search_without_components_names_the_options():
    r = run_lrm("search", "kernels=reference")
    assert r.returncode == 2 and r.stdout == "" and "Traceback" not in r.stderr
    assert "lrm search needs policy=<option> (options: hf, tree)" in r.stderr


def test_evaluate_without_an_evaluator_is_not_available():
    r = run_lrm("evaluate", "kernels=reference")
    assert r.returncode == 2
    assert "not available yet" in r.stderr and r.stdout == ""


def test_multirun_expands_sweeps_into_separate_composes():
    r = run_lrm("config", "-m", "runtime.seed=1,2", "kernels=reference,auto")
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("[multirun ") == 4
    runtime_seeds = re.findall(r"\nruntime:\n  seed: (\d+)", r.stdout)
    assert runtime_seeds == ["1", "1", "2", "2"]
    assert re.findall(r"\n  backend: (\w+)", r.stdout) == ["reference", "auto"] * 2
    assert cli.expand_multirun(["a=1,2", "b=x", "c=p,q"]) == [
        ["a=1", "b=x", "c=p"], ["a=1", "b=x", "c=q"],
        ["a=2", "b=x", "c=p"], ["a=2", "b=x", "c=q"]]


def test_plugins_text_and_json_agree():
    r = run_lrm("plugins", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert set(doc) == {"plugins", "registries"}
    assert list(doc["registries"]) == list(PUBLIC_KINDS)
    text = run_lrm("plugins").stdout
    for p in doc["plugins"]:
        assert set(p) >= {"name", "version", "registers"}
        assert f"{p['name']} {p['version']}" in text
        for kind, names in p["registers"].items():
            if names:
                assert f"{kind}: {', '.join(names)}" in text


def test_help():
    r = run_lrm("--help")
    assert r.returncode == 0 and "Verbs:" in r.stdout
    assert all(v in r.stdout for v in cli.VERBS)
