"""The separately installable example plugin: pip-install it, see it in `lrm plugins`, compose it.

The distribution is installed into the running interpreter's environment for this module's
tests and uninstalled afterwards.
"""

import json
import shutil
import subprocess
import sys

import pytest

from conftest import REPO, run_lrm

PLUGIN_SRC = REPO / "plugins" / "lrm-example-plugin"
sys.path.insert(0, str(PLUGIN_SRC))  # the task itself is tested in-process from the source


def _pip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True,
                          timeout=180)


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    if _pip("show", "lrm-example-plugin").returncode == 0:
        pytest.fail("lrm-example-plugin is already installed; uninstall it before the tests")
    src = tmp_path_factory.mktemp("plugin") / "lrm-example-plugin"
    shutil.copytree(PLUGIN_SRC, src, ignore=shutil.ignore_patterns("build", "*.egg-info",
                                                                   "__pycache__"))
    r = _pip("install", "--no-deps", "--no-build-isolation", "--no-index", str(src))
    assert r.returncode == 0, r.stdout + r.stderr
    try:
        yield
    finally:
        r = _pip("uninstall", "-y", "lrm-example-plugin")
        assert r.returncode == 0, r.stdout + r.stderr
        assert _pip("show", "lrm-example-plugin").returncode != 0  # environment left clean


def test_lrm_plugins_shows_the_example_plugin(installed):
    r = run_lrm("plugins", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    plugin = next(p for p in doc["plugins"] if p["name"] == "example")
    assert plugin["version"] == "0.1.0"
    assert plugin["distribution"] == "lrm-example-plugin"
    assert plugin["registers"]["task"] == ["countdown"]
    assert plugin["configs"] == ["task/countdown"]
    assert "countdown" in doc["registries"]["task"]
    assert "example 0.1.0  [lrm-example-plugin]" in run_lrm("plugins").stdout


def test_its_option_composes_from_the_command_line(installed):
    r = run_lrm("config", "task=countdown", "task.num_numbers=5", "task.seed=3")
    assert r.returncode == 0, r.stderr
    assert "name: countdown" in r.stdout and "num_numbers: 5" in r.stdout
    bad = run_lrm("config", "task=countdown", "task.num_numbrs=5")
    assert bad.returncode == 2 and "keys of task: name, num_numbers" in bad.stderr
    code = ("import lrm_engine; c = lrm_engine.build(lrm_engine.compose(['task=countdown', "
            "'task.num_numbers=3', '~kernels'])); print(type(c.task).__name__, c.task.num_numbers)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.stdout.split() == ["CountdownTask", "3"], r.stderr
    r = run_lrm("evaluate", "task=countdown", "kernels=reference")
    assert r.returncode == 2 and "not available yet" in r.stderr


def test_disable_env_blocks_an_entry_point_plugin(installed):
    r = run_lrm("plugins", "--json", env={"LRM_ENGINE_DISABLE_PLUGINS": "example"})
    doc = json.loads(r.stdout)
    assert "example" not in [p["name"] for p in doc["plugins"]]
    assert "countdown" not in doc["registries"]["task"]


# --- the countdown task itself ------------------------------------------------------------------


def test_countdown_generation_is_seeded_and_gold_solutions_verify():
    from lrm_engine.core.interfaces import Task
    from lrm_example_plugin.countdown import CountdownTask

    task = CountdownTask(num_numbers=4, max_number=10, seed=1, num_train=50, num_test=5)
    assert isinstance(task, Task)
    a = list(task.examples("train"))
    assert a == list(CountdownTask(seed=1, num_train=50, num_test=5).examples("train"))
    assert a != list(CountdownTask(seed=2, num_train=50, num_test=5).examples("train"))
    for ex in a:
        solution = task.step.join_steps(ex.solution_steps)
        assert task.grade(ex, solution), solution
        assert all(task.step_labels(ex.problem, solution))
        assert task.prompt(ex.problem).startswith(ex.problem.question)
        assert ex.problem.meta["target"] == int(ex.reference)  # the answer is the target


def test_countdown_verifier_rejects_each_kind_of_error():
    from lrm_engine.core.interfaces import Example, Problem
    from lrm_example_plugin.countdown import CountdownTask

    task = CountdownTask()
    ex = Example(Problem("p", "q", {"numbers": (5, 3, 2, 7), "target": 17}), reference="17")
    good = "5 * 3 = 15\n15 + 2 = 17\nAnswer: 17\n"
    assert task.grade(ex, good) and task.step_labels(ex.problem, good) == [True] * 3
    cases = {
        "5 * 3 = 16\n16 + 2 = 18\nAnswer: 17\n": [False, False, False],   # wrong arithmetic
        "5 * 5 = 25\n25 - 8 = 17\nAnswer: 17\n": [False, False, False],   # 5 used twice
        "5 * 3 = 15\n15 + 2 = 17\nAnswer: 18\n": [True, True, False],     # wrong answer
        "5 * 3 = 15\nAnswer: 17\n": [True, False],                        # target not reached
        "5 * 3 = 15\n15 + 15 = 30\nAnswer: 17\n": [True, False, False],   # 15 used twice
        "5 / 3 = 1\nAnswer: 17\n": [False, False],                        # unsupported op
    }
    for sol, labels in cases.items():
        assert task.step_labels(ex.problem, sol) == labels, sol
        assert not task.grade(ex, sol), sol
