"""Plugin system: registries, the plugin manager, hooks, LRM_ENGINE_DISABLE_PLUGINS."""

import importlib.machinery
import inspect
import json
import sys
import types
import typing

import pluggy
import pytest

from conftest import run_lrm
from lrm_engine import hookspecs
from lrm_engine.hookspecs import hookimpl
from lrm_engine.registry import (
    PUBLIC_KINDS,
    DuplicateComponentError,
    Registry,
    UnknownComponentError,
)

# --- Registry ----------------------------------------------------------------------------------


def test_registry_register_get_create_names_entries():
    reg = Registry("search")
    reg.current_plugin = "plug.a"
    reg.register("beam", lambda width=2: ("beam", width), description="beam search")
    reg.register("best_of_n", lambda n=4: ("bon", n))
    assert reg.names() == ["beam", "best_of_n"]
    assert reg.create("beam", width=5) == ("beam", 5)
    assert reg.get("best_of_n").plugin == "plug.a"
    assert reg.entries() == [("beam", "plug.a", "beam search"), ("best_of_n", "plug.a", "")]
    assert "beam" in reg and "mcts" not in reg and len(reg) == 2


def test_registry_duplicate_names_both_plugins():
    reg = Registry("task")
    reg.current_plugin = "first_plugin"
    reg.register("arith", dict)
    reg.current_plugin = "second_plugin"
    with pytest.raises(DuplicateComponentError) as e:
        reg.register("arith", dict)
    assert "first_plugin" in str(e.value) and "second_plugin" in str(e.value)
    assert "'arith'" in str(e.value)
    assert reg.get("arith").plugin == "first_plugin"  # the first registration stands


def test_registry_unknown_name_lists_known():
    reg = Registry("reward")
    reg.register("prm", dict)
    reg.register("orm", dict)
    with pytest.raises(UnknownComponentError) as e:
        reg.get("judge")
    assert isinstance(e.value, LookupError)
    assert "'judge'" in str(e.value) and "orm, prm" in str(e.value)
    assert e.value.known == ("orm", "prm")
    with pytest.raises(UnknownComponentError, match="none"):
        Registry("policy").create("tiny")


def test_registry_rejects_bad_registrations():
    reg = Registry("objective")
    with pytest.raises(TypeError):
        reg.register("", dict)
    with pytest.raises(TypeError):
        reg.register("sft", "not callable")
    with pytest.raises(ValueError):
        Registry("nope")


def test_registry_create_names_component_on_bad_kwargs():
    reg = Registry("task")
    reg.current_plugin = "p"

    def factory(steps: int = 1):
        return steps

    reg.register("t", factory)
    with pytest.raises(TypeError, match=r"task 't' \(plugin 'p'\) rejected its arguments"):
        reg.create("t", stepz=3)


# --- hook specifications ------------------------------------------------------------------------

REGISTRATION = ["lrm_register_search_algorithms", "lrm_register_reward_models",
                "lrm_register_objectives", "lrm_register_policies", "lrm_register_tasks",
                "lrm_register_annotators", "lrm_register_configs"]
LIFECYCLE = ["lrm_run_start", "lrm_iteration_end", "lrm_run_end"]


def test_hookspecs_are_all_there_typed_and_documented():
    pm = pluggy.PluginManager("lrm_engine")
    pm.add_hookspecs(hookspecs)
    names = {n for n in dir(pm.hook) if n.startswith("lrm_")}
    assert names == set(REGISTRATION + LIFECYCLE)
    for name in REGISTRATION + LIFECYCLE:
        fn = getattr(hookspecs, name)
        doc = inspect.getdoc(fn) or ""
        assert "Called" in doc, f"{name} must say when it is called"
        hints = typing.get_type_hints(fn, localns={"Components": object, "Registry": object,
                                                   "ConfigStore": object, "DictConfig": object})
        params = inspect.signature(fn).parameters
        assert params and all(p in hints for p in params), f"{name} must be fully typed"
    assert list(inspect.signature(hookspecs.lrm_run_start).parameters) == ["cfg", "components"]
    assert list(inspect.signature(hookspecs.lrm_iteration_end).parameters) == [
        "iteration", "metrics"]
    assert list(inspect.signature(hookspecs.lrm_run_end).parameters) == ["cfg", "results"]


# --- the plugin manager, with test plugins injected as built-ins --------------------------------


def _module(name: str, **functions) -> types.ModuleType:
    mod = types.ModuleType(name)
    for k, v in functions.items():
        setattr(mod, k, hookimpl(v))
    return mod


@pytest.fixture
def with_builtins(monkeypatch, fresh_plugins):
    """Add test modules as built-in plugins: with_builtins({"plugin.name": module})."""
    import lrm_builtin

    def add(plugins: dict[str, types.ModuleType]) -> None:
        table = dict(lrm_builtin.BUILTIN_PLUGINS)
        for plugin_name, mod in plugins.items():
            monkeypatch.setitem(sys.modules, mod.__name__, mod)
            # find_spec returns a module's __spec__ when it is already in sys.modules
            mod.__spec__ = importlib.machinery.ModuleSpec(mod.__name__, None)
            table[plugin_name] = mod.__name__
        monkeypatch.setattr(lrm_builtin, "BUILTIN_PLUGINS", table)

    return add


def test_manager_attributes_registrations_to_plugins(with_builtins):
    from dataclasses import dataclass

    from lrm_engine.config import SearchConfig
    from lrm_engine.plugin_manager import get_plugin_manager, plugin_infos, registries

    @dataclass
    class GreedyConfig(SearchConfig):
        # registry name
        name: str = "t_greedy"

    def reg_search(registry):
        registry.register("t_greedy", lambda: "greedy", description="test greedy")

    def reg_reward(registry):
        registry.register("t_prm", lambda: "prm")

    def reg_configs(config_store):
        config_store.store(group="search", name="t_greedy", node=GreedyConfig)

    with_builtins({
        "test.search": _module("lrm_test_search", lrm_register_search_algorithms=reg_search,
                               lrm_register_configs=reg_configs),
        "test.reward": _module("lrm_test_reward", lrm_register_reward_models=reg_reward),
    })
    pm = get_plugin_manager()
    assert pm is get_plugin_manager()  # cached
    regs = registries()
    assert set(PUBLIC_KINDS) <= set(regs)
    assert regs["search"].get("t_greedy").plugin == "test.search"
    assert regs["reward"].get("t_prm").plugin == "test.reward"
    assert regs["search"].create("t_greedy") == "greedy"
    infos = {i.name: i for i in plugin_infos()}
    assert infos["test.search"].registers["search"] == ["t_greedy"]
    assert infos["test.search"].configs == ["search/t_greedy"]
    assert infos["test.reward"].registers == {k: (["t_prm"] if k == "reward" else [])
                                              for k in PUBLIC_KINDS}
    assert infos["builtin.kernels"].version == __import__("lrm_engine").__version__

    import lrm_engine
    cfg = lrm_engine.compose(["search=t_greedy"])  # `search: null` in config.yaml
    assert lrm_engine.build(cfg).search == "greedy"


def test_reset_forgets_plugin_config_nodes(with_builtins, monkeypatch):
    from hydra.core.config_store import ConfigStore

    from lrm_engine.plugin_manager import get_plugin_manager, reset_plugin_manager

    def reg_configs(config_store):
        config_store.store(group="policy", name="t_tiny", node={"name": "t_tiny"})

    with_builtins({"test.cfg": _module("lrm_test_cfg", lrm_register_configs=reg_configs)})
    get_plugin_manager()
    assert "t_tiny.yaml" in ConfigStore.instance().repo["policy"]
    reset_plugin_manager()
    assert "t_tiny.yaml" not in ConfigStore.instance().repo.get("policy", {})


def test_duplicate_across_plugins_fails_at_startup_naming_both(with_builtins):
    from lrm_engine.plugin_manager import get_plugin_manager

    def reg(registry):
        registry.register("t_same", dict)

    with_builtins({"test.one": _module("lrm_test_one", lrm_register_tasks=reg),
                   "test.two": _module("lrm_test_two", lrm_register_tasks=reg)})
    with pytest.raises(DuplicateComponentError) as e:
        get_plugin_manager()
    assert "test.one" in str(e.value) and "test.two" in str(e.value)
    assert "LRM_ENGINE_DISABLE_PLUGINS=test.two" in str(e.value)


def test_disable_env_blocks_plugins(with_builtins, monkeypatch):
    from lrm_engine.plugin_manager import get_plugin_manager

    def reg(registry):
        registry.register("t_same", dict)

    with_builtins({"test.one": _module("lrm_test_one", lrm_register_tasks=reg),
                   "test.two": _module("lrm_test_two", lrm_register_tasks=reg)})
    monkeypatch.setenv("LRM_ENGINE_DISABLE_PLUGINS", " test.two , builtin.kernels")
    pm = get_plugin_manager()
    assert pm.registries["task"].get("t_same").plugin == "test.one"
    assert pm.get_plugin("test.two") is None and pm.is_blocked("test.two")
    assert pm.get_plugin("builtin.kernels") is None  # built-ins can be blocked too
    assert pm.disabled == ["test.two", "builtin.kernels"]
    listed = {i.name for i in pm.plugin_infos()}
    assert "test.one" in listed and "test.two" not in listed and "builtin.kernels" not in listed


def test_unknown_hook_is_rejected_by_check_pending(with_builtins):
    from lrm_engine.plugin_manager import get_plugin_manager

    with_builtins({"test.bad": _module("lrm_test_bad", lrm_register_widgets=lambda: None)})
    with pytest.raises(pluggy.PluginValidationError, match="lrm_register_widgets"):
        get_plugin_manager()


def test_failing_hook_names_the_plugin(with_builtins):
    from lrm_engine.plugin_manager import PluginError, get_plugin_manager

    def reg(registry):
        raise RuntimeError("boom")

    with_builtins({"test.boom": _module("lrm_test_boom", lrm_register_policies=reg)})
    with pytest.raises(PluginError, match=r"'test.boom' failed in lrm_register_policies.*boom"):
        get_plugin_manager()


def test_lifecycle_hooks_called_once_around_a_verb(with_builtins, capsys):
    """evaluate with a task that has an evaluator: hooks see cfg, components and results."""
    from dataclasses import dataclass

    from lrm_engine import cli
    from lrm_engine.config import TaskConfig

    calls = []

    @dataclass
    class EvalTaskConfig(TaskConfig):
        # registry name
        name: str = "t_eval"
        # a knob passed to the factory
        k: int = 2

    class EvalTask:
        def __init__(self, k: int):
            self.k = k

        def evaluate(self, cfg):
            return {"accuracy": 0.5 * self.k}

    def reg(registry):
        registry.register("t_eval", EvalTask)

    def configs(config_store):
        config_store.store(group="task", name="t_eval", node=EvalTaskConfig)

    def run_start(cfg, components):
        calls.append(("start", cfg.task.k, type(components.task).__name__))

    def run_end(cfg, results):
        calls.append(("end", dict(results)))

    with_builtins({"test.eval": _module("lrm_test_eval", lrm_register_tasks=reg,
                                        lrm_register_configs=configs,
                                        lrm_run_start=run_start, lrm_run_end=run_end)})
    assert cli.main(["evaluate", "task=t_eval", "task.k=3", "kernels=reference"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert json.loads(out[-1]) == {"accuracy": 1.5}
    assert calls == [("start", 3, "EvalTask"), ("end", {"accuracy": 1.5})]


# --- subprocess: the real environment -------------------------------------------------------


def test_lrm_plugins_lists_builtins_with_versions():
    r = run_lrm("plugins", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert list(doc["registries"]) == list(PUBLIC_KINDS)
    plugins = {p["name"]: p for p in doc["plugins"]}
    assert "builtin.kernels" in plugins
    assert plugins["builtin.kernels"]["version"] == "0.1.0"
    assert set(plugins["builtin.kernels"]["registers"]) == set(PUBLIC_KINDS)
    for p in doc["plugins"]:
        for kind, names in p["registers"].items():
            assert set(names) <= set(doc["registries"][kind])


def test_lrm_plugins_lists_tree_grpo():
    r = run_lrm("plugins", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert "tree_grpo" in doc["registries"]["objective"]
    plugins = {p["name"]: p for p in doc["plugins"]}
    assert "tree_grpo" in plugins["builtin.objectives"]["registers"]["objective"]


def test_disable_env_in_subprocess():
    r = run_lrm("plugins", "--json", env={"LRM_ENGINE_DISABLE_PLUGINS": "builtin.kernels"})
    assert r.returncode == 0, r.stderr
    names = [p["name"] for p in json.loads(r.stdout)["plugins"]]
    assert "builtin.kernels" not in names
    r = run_lrm("plugins", env={"LRM_ENGINE_DISABLE_PLUGINS": "builtin.kernels"})
    assert "Disabled (LRM_ENGINE_DISABLE_PLUGINS): builtin.kernels" in r.stdout


def test_import_is_light():
    import subprocess

    code = ("import sys, lrm_engine; lrm_engine.__version__; "
            "heavy = [m for m in ('torch', 'transformers', 'hydra', 'triton') if m in sys.modules];"
            "assert not heavy, heavy; lrm_engine.compose; "
            "assert 'torch' not in sys.modules")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_lrm_plugins_lists_orm_as_an_objective():
    r = run_lrm("plugins", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert "orm" in doc["registries"]["objective"] and "orm" in doc["registries"]["reward"]
    plugins = {p["name"]: p for p in doc["plugins"]}
    assert "orm" in plugins["builtin.objectives"]["registers"]["objective"]


def test_lrm_plugins_lists_the_issue18_searches():
    """rstar and reflexion are built-in searches with their config options (issue 18)."""
    r = run_lrm("plugins", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert {"rstar", "reflexion"} <= set(doc["registries"]["search"])
    search = next(p for p in doc["plugins"] if p["name"] == "builtin.search")
    assert {"rstar", "reflexion"} <= set(search["registers"]["search"])
    assert {"search/rstar", "search/reflexion"} <= set(search["configs"])
