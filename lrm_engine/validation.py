"""What every config field accepts, checked once, when the configuration is composed.

:func:`validate` walks a composed config (``lrm_engine.compose`` calls it, so the ``lrm`` command
and Python embedding get the same checks) and raises :class:`~lrm_engine.composition.ConfigError`
with one line that names the field, the value and what is allowed::

    search.n=0: must be an integer >= 1
    search.bogus=1: unknown key; keys of search (beam): name, n, beam_width, choice

Three tables drive it:

- :data:`FIELD_RULES`: a field name's rule wherever a schema has that field (``temperature``
  must be a finite number > 0 in ``policy.sampling``, ``annotate`` and ``pipeline`` alike);
- :data:`GROUP_RULES`: rules for one group's field (``(group, field)``), which take precedence;
- :data:`ORDERED_PAIRS`: ``(group, low, high)``: a node having both fields needs low <= high.

Besides the ranges, every key of a component node must be a field of its schema (or, for a
node without a dataclass schema, a parameter of its registered factory), so ``+search.bogus=1``
is refused here instead of inside the factory. Every float field must be finite.

The components' own ``__post_init__`` checks stay as a second line of defence. What can only
be known when things are built (CUDA present, output folder writable, model files readable)
(and the split fields, against the installed task) is checked by :func:`check_runtime` and
lrm_engine/models/loading.py.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

if TYPE_CHECKING:
    from omegaconf import DictConfig


@dataclass(frozen=True)
class Rule:
    """What one field accepts: a kind (``int``, ``num``, ``str``, ``device``, ``list``), bounds,
    a set of choices, and whether null is allowed."""

    # "int" (not bool), "num" (int or finite float), "choice", "device", "path" (non-empty
    # string) or "list" (non-empty, of `item`).
    kind: str
    # Inclusive lower bound.
    ge: float | None = None
    # Exclusive lower bound.
    gt: float | None = None
    # Inclusive upper bound.
    le: float | None = None
    # Exclusive upper bound.
    lt: float | None = None
    # Allowed values (kind "choice").
    choices: tuple[str, ...] = ()
    # null (None) is allowed too.
    null: bool = False
    # Rule of each element (kind "list").
    item: "Rule | None" = None

    def allowed(self) -> str:
        """``must be ...``: what the rule accepts, in words."""
        if self.kind == "choice":
            text = "one of " + ", ".join(self.choices)
        elif self.kind == "device":
            text = "cpu, cuda or cuda:<index>"
        elif self.kind == "path":
            text = "a non-empty path"
        elif self.kind == "list":
            assert self.item is not None
            text = "a non-empty list whose items " + self.item.allowed()
        else:
            noun = "an integer" if self.kind == "int" else "a number"
            lo = f"[{_num(self.ge)}" if self.ge is not None else f"({_num(self.gt)}" if self.gt is not None else None
            hi = f"{_num(self.le)}]" if self.le is not None else f"{_num(self.lt)})" if self.lt is not None else None
            if lo and hi:
                text = f"{noun} in {lo}, {hi}"
            elif lo:
                text = f"{noun} {'>=' if lo[0] == '[' else '>'} {lo[1:]}"
            elif hi:
                text = f"{noun} {'<=' if hi[-1] == ']' else '<'} {hi[:-1]}"
            else:
                text = "an integer" if self.kind == "int" else "a finite number"
        return "must be " + ("null or " if self.null else "") + text

    def accepts(self, value: Any) -> bool:
        if value is None:
            return self.null
        if self.kind == "choice":
            return str(getattr(value, "value", value)) in self.choices
        if self.kind == "device":
            return isinstance(value, str) and re.fullmatch(r"cpu|cuda(:\d+)?", value) is not None
        if self.kind == "path":
            return isinstance(value, str) and value.strip() != ""
        if self.kind == "list":
            assert self.item is not None
            return isinstance(value, (list, tuple)) and len(value) > 0 and all(self.item.accepts(v) for v in value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.kind == "int" and not isinstance(value, int):
            return False
        if isinstance(value, float) and not math.isfinite(value):
            return False
        return ((self.ge is None or value >= self.ge) and (self.gt is None or value > self.gt)
                and (self.le is None or value <= self.le) and (self.lt is None or value < self.lt))


def _num(v: float | None) -> str:
    return str(int(v)) if v is not None and float(v).is_integer() else str(v)


def Int(ge: int | None = None, le: int | None = None, null: bool = False) -> Rule:
    return Rule("int", ge=ge, le=le, null=null)


def Num(*, gt: float | None = None, ge: float | None = None, le: float | None = None,
        lt: float | None = None, null: bool = False) -> Rule:
    return Rule("num", gt=gt, ge=ge, le=le, lt=lt, null=null)


def OneOf(*choices: str, null: bool = False) -> Rule:
    return Rule("choice", choices=choices, null=null)


POSITIVE = Int(ge=1)
COUNT = Int(ge=0)
PROBABILITY = Num(ge=0, le=1)
DTYPES = OneOf("float32", "fp32", "bfloat16", "bf16", "float16", "fp16")
CHOICES = OneOf("best", "weighted", "majority")

# A field's rule in every schema that has a field of that name.
FIELD_RULES: dict[str, Rule] = {
    # sampling and decoding
    "temperature": Num(gt=0),
    "top_p": Num(gt=0, le=1),
    "top_k": COUNT,
    "max_step_tokens": POSITIVE,
    "max_new_tokens": POSITIVE,
    "max_prompt_tokens": POSITIVE,
    "max_completion_length": Int(ge=1, null=True),
    "max_length": POSITIVE,
    # search budgets
    "n": POSITIVE,
    "beam_width": POSITIVE,
    "simulations": POSITIVE,
    "num_leaves": POSITIVE,
    "k": POSITIVE,
    "proposals": POSITIVE,
    "keep": POSITIVE,
    "step_limit": POSITIVE,
    "solutions": POSITIVE,
    "max_children": POSITIVE,
    "init_solutions": POSITIVE,
    "critique_steps": POSITIVE,
    "probe_n": POSITIVE,
    "min_beam_n": POSITIVE,
    "lookahead": COUNT,
    "max_steps": POSITIVE,
    "choice": CHOICES,
    "easy_choice": CHOICES,
    "evaluator": OneOf("aggregate", "last"),
    "aggregation": OneOf("min", "prod", "last", "mean"),
    # problems and batches
    "batch_size": POSITIVE,
    "micro_batch_size": POSITIVE,
    "grad_accum": POSITIVE,
    "limit": Int(ge=1, null=True),
    "num_rollouts": POSITIVE,
    "num_candidates": POSITIVE,
    "num_solutions": POSITIVE,
    "num_generations": POSITIVE,
    "mc_rollouts": POSITIVE,
    "num_test": POSITIVE,
    "num_train": POSITIVE,
    "total_steps": POSITIVE,
    "warmup_steps": COUNT,
    "log_every": POSITIVE,
    # training
    "lr": Num(gt=0),
    "min_lr_ratio": PROBABILITY,
    "weight_decay": Num(ge=0),
    "max_grad_norm": Num(gt=0),
    "label_smoothing": Num(ge=0, lt=1),
    "noise_fraction": PROBABILITY,
    "precision": OneOf("fp32", "bf16"),
    # models
    "kv_budget_mb": Num(gt=0),
    "device": Rule("device"),
    "dtype": DTYPES,
    "grade_timeout": Num(gt=0),
    "timeout": Num(gt=0),
    "num_threads": COUNT,
}

# (group, field) -> rule; takes precedence over FIELD_RULES. The group is the first part of the
# field's path (``search``, ``policy``, ``search_run``, ``pipeline``, ...). (`lrm run`'s
# ``stage``, ``pipeline.annotate_completer`` and ``pipeline.prm_readout`` are checked by
# lrm_engine/pipeline.py when the run starts, before any stage.)
GROUP_RULES: dict[tuple[str, str], Rule] = {
    ("runtime", "device"): OneOf("auto", "cpu", "cuda"),
    ("runtime", "output_dir"): Rule("path"),
    ("policy", "prior"): OneOf("softmax", "uniform"),
    ("policy", "attn_backend"): OneOf("auto", "reference", "cpp", "triton"),
    ("policy", "chunk_size"): POSITIVE,
    ("search", "prior"): OneOf("policy", "logprob", "uniform"),
    ("search", "value"): OneOf("prm", "rollout"),
    ("search", "terminal_value"): OneOf("aggregate", "last"),
    ("search", "final"): OneOf("visits", "value"),
    ("search", "iterations"): COUNT,
    ("search", "alpha"): PROBABILITY,
    ("search", "gamma"): PROBABILITY,
    ("search", "easy_threshold"): PROBABILITY,
    ("search", "min_weight"): Num(ge=0),
    ("search", "c1"): Num(ge=0),
    ("search", "c2"): Num(gt=0),
    ("search", "c_uct"): Num(ge=0),
    ("search", "virtual_loss"): Num(ge=0),
    ("reward", "mode"): OneOf("exact", "math"),
    ("reward", "head"): OneOf("prm_token", "prm_head", "value_head"),
    ("reward", "readout"): OneOf("tag", "likelihood", null=True),
    ("reward", "backend"): OneOf("auto", "reference", "cpp", "triton", "cuda"),
    ("reward", "positive_class"): Int(ge=0, le=1),
    ("reward", "threshold"): PROBABILITY,
    ("reward", "neutral"): PROBABILITY,
    ("reward", "tie_break"): OneOf("soft", "none"),
    ("task", "prompt_style"): OneOf("plain", "chat"),
    ("task", "shape"): OneOf("mixed", "chain"),
    ("task", "min_steps"): POSITIVE,
    ("task", "min_operand"): COUNT,
    ("task", "test_fraction"): Num(gt=0, lt=1),
    ("task", "on_missing"): OneOf("error", "wrong"),
    ("task", "threshold"): PROBABILITY,
    ("task", "subsets"): Rule("list", item=OneOf("gsm8k", "math", "olympiadbench", "omnimath")),
    ("annotate", "unparseable"): OneOf("neutral", "skip"),
    ("annotate", "neutral"): PROBABILITY,
    ("annotate", "max_searches"): POSITIVE,
    ("annotate", "max_depth"): POSITIVE,
    ("annotate", "max_journeys"): POSITIVE,
    ("annotate", "wrong_steps"): POSITIVE,
    ("annotate", "margin"): PROBABILITY,
    ("export", "tree"): OneOf("none", "json", "html", null=True),
    ("pipeline", "eval_problems"): POSITIVE,
    ("pipeline", "sft_examples"): POSITIVE,
    ("pipeline", "sft_noise"): PROBABILITY,
    ("pipeline", "sft_steps"): POSITIVE,
    ("pipeline", "sft_batch"): POSITIVE,
    ("pipeline", "sft_lr"): Num(gt=0),
    ("pipeline", "annotate_problems"): POSITIVE,
    ("pipeline", "annotate_rollouts"): POSITIVE,
    ("pipeline", "prm_warmup_steps"): COUNT,
    ("pipeline", "prm_warmup_lr"): Num(gt=0),
    ("pipeline", "prm_steps"): POSITIVE,
    ("pipeline", "prm_batch"): POSITIVE,
    ("pipeline", "prm_lr"): Num(gt=0),
    ("pipeline", "prm_eval_problems"): POSITIVE,
    ("pipeline", "searches"): Rule("list", item=OneOf("greedy", "majority", "best_of_n", "beam")),
    ("pipeline", "sweep_n"): Rule("list", item=POSITIVE),
    ("pipeline", "sweep_top_p"): Num(gt=0, le=1),
    ("pipeline", "search_batch"): POSITIVE,
    ("executor", "num_workers"): POSITIVE,
    ("executor", "num_cpus"): Num(gt=0),
    ("executor", "num_gpus"): Num(ge=0),
    ("executor", "max_restarts"): COUNT,
}

# executor.address: null (a local Ray), auto, host:port or ray://host:port.
RAY_ADDRESS = re.compile(r"auto|(ray://)?[A-Za-z0-9_.\-]+:\d{1,5}")

# (group, low field, high field): in a node that has both, low <= high.
ORDERED_PAIRS: tuple[tuple[str, str, str], ...] = (
    ("task", "min_steps", "max_steps"),
    ("task", "min_operand", "max_operand"),
    ("task", "max_operand", "max_value"),
)

# Float fields that may hold nan / inf on purpose (none so far).
NONFINITE_OK: frozenset[tuple[str, str]] = frozenset()


def rule_for(path: str) -> Rule | None:
    """The rule of a dotted config path (``search.n``, ``policy.sampling.temperature``)."""
    parts = path.split(".")
    group, leaf = parts[0], parts[-1]
    return GROUP_RULES.get((group, leaf)) or FIELD_RULES.get(leaf)


def show(value: Any) -> str:
    """A value as the user would write it in an override."""
    value = getattr(value, "value", value)  # enums
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value if value and value.strip() == value else repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(show(v) for v in value) + "]"
    return str(value)


def problems(cfg: DictConfig) -> Iterator[str]:
    """Every problem of a composed config, one line each (empty when it is valid)."""
    from omegaconf import DictConfig

    from lrm_engine.config import COMPONENT_GROUPS

    for key in cfg.keys():
        node = cfg._get_node(key)
        key = str(key)
        if isinstance(node, DictConfig):
            if key in COMPONENT_GROUPS:
                yield from _unknown_keys(node, key, kind=COMPONENT_GROUPS[key])
            elif key in ("kernels", "runtime", "executor", "pipeline"):
                yield from _unknown_keys(node, key, kind=None)
            if key == "executor":
                yield from _executor_problems(node)
            yield from _values(node, key, key)
        else:
            yield from _leaf(cfg, key, key, key)


def _executor_problems(node: DictConfig) -> Iterator[str]:
    """``executor.address`` must look like an address Ray can join (reachability: at run time)."""
    if "address" not in node:
        return
    value = _get(node, "address")
    if value is None or value is _UNRESOLVED:
        return
    if not isinstance(value, str) or RAY_ADDRESS.fullmatch(value) is None:
        yield (f"executor.address={show(value)}: must be null (start a local Ray), auto (the "
               f"cluster this machine joined with `ray start`), host:port or ray://host:port")


# Fields that name a split of the selected task (checked against the task class's `splits`).
SPLIT_FIELDS: tuple[str, ...] = ("search_run.split", "pipeline.eval_split")


def _split_problems(cfg: DictConfig) -> Iterator[str]:
    """A split field naming a split the selected task does not have (checked by check_runtime:
    a composed config may name a split that a task of another plugin version has)."""
    from omegaconf import OmegaConf

    task = cfg.get("task")
    if task is None or not isinstance(task.get("name"), str):
        return
    splits = _task_splits(task.name)
    if not splits:
        return
    for path in SPLIT_FIELDS:
        value = OmegaConf.select(cfg, path, default=None)
        if value is not None and str(value) not in splits:
            yield f"{path}={show(value)}: task {task.name} has no such split; splits: {', '.join(splits)}"


def _task_splits(name: str) -> tuple[str, ...]:
    """The ``splits`` a task's registered factory declares (empty: it declares none)."""
    from lrm_engine.plugin_manager import registries

    try:
        splits = getattr(registries()["task"].get(name).factory, "splits", ())
    except Exception:  # an unknown task is reported when it is built
        return ()
    ok = isinstance(splits, (tuple, list)) and all(isinstance(x, str) for x in splits)
    return tuple(splits) if ok else ()


def validate(cfg: DictConfig) -> None:
    """Raise :class:`~lrm_engine.composition.ConfigError` with the first problem of ``cfg``."""
    from lrm_engine.composition import ConfigError

    for line in problems(cfg):
        raise ConfigError(line)


def _values(node: DictConfig, group: str, path: str) -> Iterator[str]:
    from omegaconf import DictConfig

    for key in node.keys():
        child = node._get_node(key)
        sub = f"{path}.{key}"
        if isinstance(child, DictConfig):
            yield from _values(child, group, sub)
        else:
            yield from _leaf(node, key, group, sub)
    keys = set(map(str, node.keys()))
    for g, lo, hi in ORDERED_PAIRS:
        if g == group and lo in keys and hi in keys:
            a, b = _get(node, lo), _get(node, hi)
            if _is_num(a) and _is_num(b) and a > b:
                yield (f"{path}.{lo}={show(a)}: must be <= {path}.{hi} ({show(b)})")


def _get(node: DictConfig, key: str) -> Any:
    from omegaconf import ListConfig, OmegaConf

    try:
        value = node[key]
    except Exception:  # an interpolation that does not resolve: OmegaConf reports it on use
        return _UNRESOLVED
    if isinstance(value, ListConfig):
        return OmegaConf.to_container(value, resolve=True)
    return value


_UNRESOLVED = object()


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _leaf(node: DictConfig, key: Any, group: str, path: str) -> Iterator[str]:
    value = _get(node, str(key))
    if value is _UNRESOLVED:
        return
    leaf = path.rsplit(".", 1)[-1]
    rule = GROUP_RULES.get((group, leaf)) or FIELD_RULES.get(leaf)
    if rule is not None:
        if not rule.accepts(value):
            yield f"{path}={show(value)}: {rule.allowed()}"
        return
    if isinstance(value, float) and not math.isfinite(value) and (group, leaf) not in NONFINITE_OK:
        yield f"{path}={show(value)}: must be a finite number"


def _unknown_keys(node: DictConfig, path: str, kind: str | None) -> Iterator[str]:
    """Keys of ``node`` (and its typed sub-nodes) that its schema or factory does not take."""
    from omegaconf import DictConfig, OmegaConf

    allowed = _allowed_keys(node, kind)
    if allowed is not None:
        label = path
        name = node.get("name") if "name" in node else None
        if kind is not None and isinstance(name, str):
            label = f"{path} ({name})"
        for key in node.keys():
            if str(key) not in allowed:
                value = _get(node, str(key))
                shown = "{...}" if isinstance(node._get_node(key), DictConfig) else show(value)
                yield (f"{path}.{key}={shown}: unknown key; keys of {label}: "
                       f"{', '.join(allowed)}")
    for key in node.keys():
        child = node._get_node(key)
        if isinstance(child, DictConfig) and dataclasses.is_dataclass(OmegaConf.get_type(child)):
            yield from _unknown_keys(child, f"{path}.{key}", kind=None)


def _allowed_keys(node: DictConfig, kind: str | None) -> dict[str, None] | None:
    """Field names of the node's dataclass schema; else its factory's parameters; None: any."""
    import inspect

    from omegaconf import OmegaConf

    schema = OmegaConf.get_type(node)
    if dataclasses.is_dataclass(schema):
        return {f.name: None for f in dataclasses.fields(schema)}
    if kind is None or not isinstance(node.get("name"), str):
        return None
    from lrm_engine.plugin_manager import registries

    try:
        factory = registries()[kind].get(node.name).factory
        params = inspect.signature(factory).parameters
    except Exception:  # unknown name (reported when it is built) or no signature
        return None
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return None
    return {"name": None, **{p: None for p in params if not p.startswith("_")}}


# ------------------------------------------------------------------------- at build time


def check_runtime(cfg: DictConfig) -> None:
    """What only the machine can tell: the devices asked for exist, the output folder is
    writable, the split fields name splits of the installed task, Ray is installed for
    ``executor=ray`` (whether its ``address`` answers is checked when the run connects).

    Raises :class:`~lrm_engine.errors.UserError` with one line. Called by the verbs that run
    (not by ``compose``: a config for another machine composes anywhere).
    """
    from lrm_engine.errors import UserError

    for line in _split_problems(cfg):
        raise UserError(line)
    rt = cfg.get("runtime")
    if rt is not None:
        device = str(getattr(rt.get("device"), "value", rt.get("device")))
        if device == "cuda":
            check_cuda("runtime.device=cuda")
        out = rt.get("output_dir")
        if out is not None:
            problem = writable_dir_problem(Path(str(out)))
            if problem:
                raise UserError(f"runtime.output_dir={show(str(out))}: {problem}")
    for group in ("policy", "reward", "annotate"):
        node = cfg.get(group)
        if node is not None and isinstance(node.get("device"), str) and node.device.startswith("cuda"):
            check_cuda(f"{group}.device={node.device}")
    executor = cfg.get("executor")
    if executor is not None and executor.get("name") == "ray":
        import importlib.util

        if importlib.util.find_spec("ray") is None:
            raise UserError("executor=ray: Ray is not installed; pip install 'lrm_engine[ray]' "
                            "(or pip install ray), or use executor=local")
        from lrm_engine.executor.ray_executor import unreachable_problem

        problem = unreachable_problem(executor.get("address"))
        if problem:  # before any model is loaded
            raise UserError(problem)


def check_cuda(what: str) -> None:
    """UserError naming ``what`` when torch sees no CUDA device."""
    import torch

    from lrm_engine.errors import UserError

    if not torch.cuda.is_available():
        why = ("this torch build has no CUDA support" if torch.version.cuda is None
               else "no CUDA device is visible")
        raise UserError(f"{what}: CUDA is not available ({why}); use cpu")


def writable_dir_problem(path: Path) -> str | None:
    """Why ``path`` cannot be a folder this process writes into, or None.

    The folder is created if it is missing (the verb would create it anyway), and written to
    once with a probe file that is removed again: only writing tells (permission bits do not
    stop root, a read-only or pseudo file system refuses anyway).
    """
    import tempfile

    p = path.expanduser()
    if p.exists() and not p.is_dir():
        return "is a file, not a folder; choose a folder"
    try:
        p.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".lrm_write_probe_", dir=p)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        return f"is not a writable folder ({e.strerror or e}); choose a folder you can write to"
    return None
