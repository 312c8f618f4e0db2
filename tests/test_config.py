"""Configuration: every option of every group composes and builds; typed schemas; embedding."""

import dataclasses
import inspect
import re
from pathlib import Path

import pytest
from omegaconf import OmegaConf

import lrm_engine
from lrm_engine.components import Components, build
from lrm_engine.composition import ConfigError, all_options, compose
from lrm_engine.config import GROUPS, COMPONENT_GROUPS
from lrm_engine.registry import UnknownComponentError

CONF = Path(__file__).resolve().parents[1] / "conf"


def _options():
    return [(g, o) for g, opts in all_options().items() for o in opts]


def test_groups_are_listed_and_schemas_are_not_options():
    opts = all_options()
    assert list(opts)[: len(GROUPS)] == list(GROUPS)
    assert "schema" not in opts and "hydra" not in opts
    assert opts["kernels"] == sorted(["auto", "reference", "cpp", "triton", "cuda"])
    assert opts["runtime"] == ["default"]


def test_default_config_names_only_existing_options():
    cfg = compose()
    assert cfg.kernels.backend == "auto" and cfg.runtime.seed == 0
    assert "hydra" not in cfg
    defaults = OmegaConf.load(CONF / "config.yaml")["defaults"]
    opts = all_options()
    for entry in defaults:
        if entry == "_self_":
            continue
        ((group, option),) = entry.items()
        assert group in GROUPS
        assert option is None or option in opts[group], f"config.yaml names {group}={option}"


@pytest.mark.parametrize("group,option", _options())
def test_every_option_composes_and_builds(group, option):
    """Every option composes, has a `name`, and builds through its registry (or kernels)."""
    cfg = compose([f"{group}={option}"])
    node = cfg[group]
    if group == "pipeline":  # settings of `lrm run`, not a component: they instantiate as such
        from omegaconf import OmegaConf

        from lrm_engine.pipeline import PipelineConfig

        pc = PipelineConfig(**OmegaConf.to_container(node, resolve=True))
        assert pc.sweep_n and pc.searches
        return
    if group != "runtime":
        assert isinstance(node.name, str) and node.name, f"{group}/{option} has no name"
    if group == "executor":  # where batches run, not a component: the executor object (no Ray start)
        from lrm_engine.executor import make_executor

        ex = make_executor(cfg)
        assert ex.name == option and ex.remote == (option != "local")
        return
    if group == "kernels":
        _check_kernels(cfg, option)
        return
    comps = build(compose([f"{group}={option}", "kernels=reference"]))
    if group in COMPONENT_GROUPS:
        assert getattr(comps, COMPONENT_GROUPS[group]) is not None


def _check_kernels(cfg, option):
    ops = pytest.importorskip("lrm_engine.ops")
    if not hasattr(ops, "get_backend"):
        pytest.skip("lrm_engine.ops.get_backend has not landed")
    built = ops.available_backends() if hasattr(ops, "available_backends") else ["reference"]
    if option in ("auto", "reference") or option in built:
        backend = build(cfg).kernels
        assert backend is not None
        if option != "auto":
            assert getattr(backend, "name", option) == option
    else:
        with pytest.raises(ops.BackendUnavailableError) as e:
            build(cfg)
        # the message names the backends that were built
        assert all(b in str(e.value) for b in built), str(e.value)


def test_kernels_resolution_goes_through_get_backend(monkeypatch):
    """Independent of which backends exist: build passes backend and device to get_backend."""
    import types

    import lrm_engine.ops as ops

    seen = {}

    class Unavailable(RuntimeError):
        pass

    def fake_get_backend(name, device=None):
        seen["args"] = (name, device)
        if name == "cuda":
            raise Unavailable("backend 'cuda' is not built; built: reference, cpp")
        return types.SimpleNamespace(name=name)

    monkeypatch.setattr(ops, "get_backend", fake_get_backend)
    cfg = compose(["kernels=cpp", "runtime.device=cpu", "~task"])
    assert build(cfg).kernels.name == "cpp" and seen["args"] == ("cpp", "cpu")
    with pytest.raises(Unavailable, match="built: reference, cpp"):
        build(compose(["kernels=cuda", "runtime.device=cpu", "~task"]))


# --- typing -------------------------------------------------------------------------------------


@pytest.mark.parametrize("override,expect", [
    ("runtime.seed=abc", "runtime.seed"),
    ("runtime.device=gpu", "expected one of [auto, cpu, cuda]"),
    ("kernels.backend=fast", "expected one of [auto, reference, cpp, triton, cuda]"),
    ("runtime.sed=1", "runtime.sed=1: unknown key 'sed'; keys of runtime: seed, device"),
    ("kernels=fast", "kernels=fast: unknown option of kernels; options: auto, cpp, cuda, reference, triton"),
    ("nope=1", "'nope' is neither a config group nor a key"),
])
def test_wrong_overrides_fail_with_the_valid_choices(override, expect):
    with pytest.raises(ConfigError) as e:
        compose([override])
    assert expect in str(e.value)
    assert len(str(e.value).splitlines()) == 1  # one line
    assert "schema" not in str(e.value)  # schema/* is never offered


def test_executor_options_compose_with_their_knobs():
    from lrm_engine.executor import make_executor

    assert compose([]).executor.name == "local"  # the default: today's in-process loop
    cfg = compose(["executor=ray", "executor.address=ray://10.0.0.7:10001", "executor.num_workers=4",
                   "executor.num_cpus=2", "executor.num_gpus=0.5", "executor.max_restarts=0"])
    ex = make_executor(cfg)
    assert (ex.address, ex.num_workers, ex.num_cpus, ex.num_gpus, ex.max_restarts) == \
        ("ray://10.0.0.7:10001", 4, 2.0, 0.5, 0)
    assert make_executor(compose(["executor=ray", "executor.address=auto"])).address == "auto"
    assert make_executor(compose(["executor=ray", "executor.address=127.0.0.1:6379"])).address == "127.0.0.1:6379"


@pytest.mark.parametrize("override,expect", [
    ("executor.num_workers=0", "executor.num_workers=0: must be an integer >= 1"),
    ("executor.num_cpus=0", "executor.num_cpus=0.0: must be a number > 0"),
    ("executor.num_gpus=-1", "executor.num_gpus=-1.0: must be a number >= 0"),
    ("executor.max_restarts=-1", "executor.max_restarts=-1: must be an integer >= 0"),
    ("executor.address=my-cluster", "executor.address=my-cluster: must be null (start a local Ray), "
                                    "auto (the cluster this machine joined with `ray start`), "
                                    "host:port or ray://host:port"),
])
def test_wrong_executor_options_are_one_line(override, expect):
    with pytest.raises(ConfigError) as e:
        compose(["executor=ray", override])
    assert str(e.value) == expect


def test_every_schema_field_and_yaml_key_has_a_comment():
    """A comment above every field of every option's dataclass and every key of every YAML."""
    for group, option in _options():
        cfg = compose([f"{group}={option}"])
        schema = OmegaConf.get_type(cfg[group])
        assert dataclasses.is_dataclass(schema), f"{group}/{option} is not typed by a dataclass"
        for f in dataclasses.fields(schema):
            owner = next(c for c in schema.__mro__ if f.name in c.__dict__.get("__annotations__", {}))
            lines = inspect.getsource(owner).splitlines()
            i = next(i for i, line in enumerate(lines) if re.match(rf"\s+{f.name}\s*:", line))
            assert lines[i - 1].strip().startswith("#"), \
                f"{owner.__name__}.{f.name} ({group}/{option}) needs a comment above it"
    for path in CONF.rglob("*.yaml"):
        lines = path.read_text().splitlines()
        in_defaults = False
        for i, line in enumerate(lines):
            if line.startswith("defaults:"):
                in_defaults = True
                continue
            if in_defaults and (line.startswith(" ") or line.startswith("-")):
                continue
            in_defaults = False
            if re.match(r"\s*[A-Za-z_][\w]*\s*:", line):
                prev = lines[i - 1].strip() if i else ""
                assert prev.startswith("#"), f"{path}:{i + 1} `{line.strip()}` needs a comment"


def test_yaml_options_are_typed_by_their_schema():
    for path in CONF.glob("*/*.yaml"):
        group, option = path.parent.name, path.stem
        defaults = OmegaConf.load(path).get("defaults", [])
        # a variant may reuse another option's schema (task/arith_hard uses schema/task/arith)
        typed = [d for d in defaults if isinstance(d, str)
                 and re.fullmatch(rf"/schema/{group}/\w+@_here_", d)]
        assert typed and defaults.index(typed[0]) < defaults.index("_self_"), \
            f"{path} is not typed: start it with defaults: [/schema/{group}/<name>@_here_, _self_]"


# --- Python embedding -----------------------------------------------------------------------


class MyTask:
    """A component constructed directly, with no registry and no config."""

    name = "mine"


def test_build_from_compose_matches_the_cli_config():
    from conftest import run_lrm

    r = run_lrm("config", "runtime.seed=7", "kernels=reference")
    assert r.returncode == 0, r.stderr
    assert r.stdout == OmegaConf.to_yaml(lrm_engine.compose(["runtime.seed=7",
                                                             "kernels=reference"]))


def test_components_passed_in_directly():
    mine = MyTask()
    comps = Components(task=mine)
    assert comps.task is mine and comps.policy is None and comps.kernels is None
    assert build(task=mine) == Components(task=mine)
    cfg = compose(["kernels=reference", "runtime.device=cpu"])
    built = lrm_engine.build(cfg, task=mine)
    assert built.task is mine  # the config's task is not built
    assert built.kernels is not None
    assert comps.replace(search="s").search == "s"
    with pytest.raises(TypeError, match="valid: task, policy"):
        build(cfg, planner=object())


def test_unknown_component_name_lists_registered_ones():
    cfg = compose(["kernels=reference"])
    if cfg.get("task") is None:
        pytest.skip("no task option to rename")
    cfg.task.name = "no_such_task"
    with pytest.raises(UnknownComponentError) as e:
        build(cfg)
    from lrm_engine.plugin_manager import registries
    assert ", ".join(registries()["task"].names()) in str(e.value)


def test_embedding_doc_example_runs():
    """docs/embedding.md's ten lines run as written (the last one raises ConfigError)."""
    doc = (Path(__file__).resolve().parents[1] / "docs" / "embedding.md").read_text()
    code = re.search(r"```python\n(.*?)```", doc, re.S).group(1).splitlines()
    assert len(code) <= 12
    scope: dict = {}
    exec("\n".join(code[:-1]), scope)
    assert scope["parts"].task is scope["mine"]
    with pytest.raises(ConfigError, match="task=nope: unknown option of task; options: "):
        exec(code[-1], scope)


# --- issue 18: tree_grpo and search-in-the-loop rollouts ----------------------------------------


@pytest.mark.parametrize("overrides", [
    ["objective=grpo", "objective.rollout.search=beam", "++objective.rollout.search_args={n: 4, beam_width: 2}"],
    ["objective=ppo", "objective.rollout.search=mcts", "objective.rollout.search_prm=null",
     "objective.rollout.max_steps=4", "objective.rollout.max_step_tokens=16"],
    ["objective=tree_grpo", "objective.rollout.branch_top=1", "objective.shared_weight=once",
     "objective.rollout.policy=hf", "objective.rollout.tree_width=4"],
])
def test_new_rollout_options_compose_and_build(overrides):
    """The rollout.search options of grpo / ppo and every tree_grpo option compose and build."""
    cfg = compose(overrides + ["kernels=reference"])
    comps = build(cfg)
    o = cfg.objective
    assert comps.objective is not None and comps.objective.name == o.name
    if "search" in o.rollout:
        assert o.rollout.search in ("beam", "mcts")
        from lrm_engine.train.rl_run import RolloutSettings
        from lrm_engine.train.sft import _coerce

        ro = _coerce(RolloutSettings, OmegaConf.to_container(o.rollout, resolve=True))
        assert ro.search == o.rollout.search
    else:
        assert comps.objective.shared_weight == "once" and o.rollout.branch_top == 1


# --- data-parallel training knobs (issue 17) ------------------------------------------------------


@pytest.mark.parametrize("option", sorted(o for o in all_options()["objective"]
                                          if "train" in compose([f"objective={o}"]).objective))
def test_train_strategy_and_timeout_compose_into_the_loop_config(option):
    from lrm_engine.verbs.train import _train_config, settings_hash

    base = compose([f"objective={option}", "task=arith"])
    assert base.objective.train.strategy == "ddp" and base.objective.train.dist_timeout_s == 600.0
    cfg = compose([f"objective={option}", "task=arith", "objective.train.strategy=fsdp",
                   "objective.train.dist_timeout_s=30"])
    tc = _train_config(cfg)
    assert tc.strategy == "fsdp" and tc.dist_timeout_s == 30.0
    # how the ranks are laid out is not what is trained: the run folder stays the same
    assert settings_hash(cfg) == settings_hash(base)


def test_there_is_no_trainer_group_yet():
    # the strategy knob lives with the other loop knobs (objective.train.strategy)
    with pytest.raises(ConfigError) as e:
        compose(["objective=sft", "trainer.strategy=fsdp"])
    assert "trainer" in str(e.value)


@pytest.mark.parametrize("overrides,check", [
    (["objective=prm", "objective.head=prm_head"], lambda o: (o.head, o.name) == ("prm_head", "prm")),
    (["objective=prm", "objective.head=value_head", "objective.value_loss=bce", "objective.label_mode=soft"],
     lambda o: (o.head, o.value_loss, o.label_mode) == ("value_head", "bce", "soft")),
    (["objective=orm"], lambda o: (o.name, o.head, o.batch_kind, o.config_file) == ("orm", "prm_token", "orm", "orm_config.json")),
    (["objective=orm", "objective.head=value_head", "objective.data=x.jsonl"],
     lambda o: (o.head, o.value_loss) == ("value_head", "mse")),
])
def test_prm_heads_and_orm_options_build(overrides, check):
    """The head / value_loss options of objective=prm and the orm objective compose and build."""
    obj = build(compose(overrides)).objective
    assert check(obj)


def test_bad_head_is_refused_naming_the_field():
    with pytest.raises(Exception, match="head must be one of"):
        build(compose(["objective=prm", "objective.head=pairwise"]))


def test_processbench_reward_options_build(tmp_path):
    task = build(compose(["task=processbench", "task.limit=5", "task.held_out=0", "task.batch_size=2",
                          f"task.scores_file={tmp_path}/s.jsonl"])).task
    assert (task.limit, task.held_out, task.batch_size) == (5, 0.0, 2)
    assert task.scores_file == f"{tmp_path}/s.jsonl"
    default = build(compose(["task=processbench"])).task
    assert (default.limit, default.held_out, default.scores_file) == (None, 0.25, None)
    with pytest.raises(Exception, match="held_out"):
        build(compose(["task=processbench", "task.held_out=1.5"]))


# --- rstar, reflexion, journey reflector (issue 18) -------------------------------------------


@pytest.mark.parametrize("overrides,check", [
    (["search=rstar", "search.actions=[A1,A3,A4]", "search.templates.A3=Q: ", "search.discriminate=false"],
     lambda c: c.actions == ("A1", "A3", "A4") and c.templates["A3"] == "Q: " and not c.discriminate),
    (["search=rstar", "search.rollouts=4", "search.mask_low=0.5", "search.mask_high=0.5"],
     lambda c: c.rollouts == 4 and c.mask_low == c.mask_high == 0.5),
    (["search=reflexion", "search.memory=task", "search.max_attempts=2", "search.memory_size=1",
      "runtime.output_dir=/tmp/x"],
     lambda c: c.memory == "task" and c.max_attempts == 2 and c.records == "/tmp/x/results.jsonl"),
    (["annotate=journey", "annotate.reflector=policy", "annotate.reflector_prompt='{prompt}{step}'"],
     lambda c: c.reflector == "policy" and c.reflector_prompt == "{prompt}{step}"),
])
def test_issue18_options_compose_and_build(overrides, check):
    comps = build(compose(overrides))
    built = comps.search if overrides[0].startswith("search=") else comps.annotator
    assert check(built)


@pytest.mark.parametrize("override,expect", [
    ("search.memory=global", "unknown search.memory 'global'; choose one of: episode, task"),
    ("search.max_attempts=0", "search.max_attempts"),
])
def test_issue18_bad_values_are_user_errors(override, expect):
    from lrm_engine.errors import UserError

    with pytest.raises(UserError, match=re.escape(expect)):
        build(compose(["search=reflexion", override]))
