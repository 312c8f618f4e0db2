"""The ``lrm`` command: ``lrm <verb> [-m] [overrides...]``.

Verbs: run (the default), search, annotate, train, evaluate, plugins. Every verb except
``plugins`` composes the configuration with :func:`lrm_engine.compose` (the same call Python
embedding uses), builds the components with :func:`lrm_engine.build`, and runs the verb's
implementation from ``lrm_engine/verbs/<verb>.py``.

Exit codes: 0 success; 2 a usage or configuration error, or any error the user can fix (one
line ``lrm <verb>: <what is wrong and what is allowed>``, no traceback), or a verb whose
machinery has not landed yet ("not available yet: <what is missing>"). A hidden verb,
``lrm config [overrides]``, prints the composed configuration as YAML.
"""

from __future__ import annotations

import importlib
import importlib.util
import itertools
import json
import sys
from typing import TYPE_CHECKING, Any, Sequence, TextIO

from lrm_engine.config import COMPONENT_GROUPS

if TYPE_CHECKING:
    from omegaconf import DictConfig

VERBS: tuple[str, ...] = ("run", "search", "annotate", "train", "evaluate", "plugins")
HIDDEN_VERBS: tuple[str, ...] = ("config",)
DEFAULT_VERB = "run"

# The component kinds (registries) each verb needs.
VERB_NEEDS: dict[str, tuple[str, ...]] = {
    "run": ("task", "search", "annotator"),
    "search": ("task", "policy", "search"),  # reward: only for searches that score steps
    "annotate": ("task", "policy", "annotator"),
    "train": ("task", "objective"),
    "evaluate": ("task",),
}
# Verbs that build their own components from the registries (rather than from the selected
# config options) need only these groups selected; the others need every group in VERB_NEEDS.
VERB_SELECTS: dict[str, tuple[str, ...]] = {"run": ("task",)}
# Which piece of work brings each kind of component (named in "not available yet").
PROVIDED_BY: dict[str, str] = {
    "task": "tasks issue",
    "policy": "models issue",
    "reward": "reward models issue",
    "search": "search issue",
    "objective": "training objectives issue",
    "annotator": "data construction issue",
}
# Config group of each component kind (inverse of COMPONENT_GROUPS).
GROUP_OF_KIND: dict[str, str] = {kind: group for group, kind in COMPONENT_GROUPS.items()}

USAGE = """\
usage: lrm [VERB] [-m|--multirun] [OVERRIDE ...]
       lrm plugins [--json]

Verbs:
  run        the default pipeline (default when no verb is given)
  search     test-time search over a task's problems
  annotate   process/outcome annotation of search traces
  train      train a policy or reward model with an objective
  evaluate   evaluate with the task's evaluator, print metrics as JSON
  plugins    list plugins, their versions and what they register (--json for JSON)

Overrides are Hydra overrides: group=option (task=arith), key=value (runtime.seed=1),
+key=value to add a key, ~key to delete. -m/--multirun runs one job per combination of
comma-separated values (search.n=4,16,64).
"""


class UsageError(Exception):
    """A command-line mistake; exit code 2 (the usage is printed when ``show_usage``)."""

    def __init__(self, message: str, *, show_usage: bool = True) -> None:
        super().__init__(message)
        self.show_usage = show_usage


class NotAvailableError(Exception):
    """The verb's machinery has not landed yet; the message says what is missing."""


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``lrm``; returns the exit code."""
    from lrm_engine.composition import ConfigError

    args = list(sys.argv[1:] if argv is None else argv)
    verb = DEFAULT_VERB
    try:
        verb, flags, overrides = parse_args(args)
        if "help" in flags:
            print(USAGE, end="")
            return 0
        if verb == "plugins":
            if overrides:
                raise UsageError(f"lrm plugins takes no overrides, got {' '.join(overrides)}")
            print_plugins(as_json="json" in flags)
            return 0
        if "json" in flags:
            raise UsageError("--json is only for `lrm plugins`")
        if "multirun" in flags:
            from lrm_engine.composition import compose
            from lrm_engine.sweep import run_sweep

            run_sweep(verb, expand_multirun(overrides), run_verb, compose)
        else:
            run_verb(verb, overrides)
        return 0
    except UsageError as e:
        print(f"lrm: {one_line(e)}" + (f"\n\n{USAGE}" if e.show_usage else ""), file=sys.stderr,
              end="" if e.show_usage else "\n")
        return 2
    except ConfigError as e:
        print(f"lrm {verb}: {one_line(e)}", file=sys.stderr)
        return 2
    except NotAvailableError as e:
        print(f"lrm {verb}: not available yet: {one_line(e)}", file=sys.stderr)
        return 2
    except _user_errors() as e:
        print(f"lrm {verb}: {one_line(e)}", file=sys.stderr)
        return 2


def one_line(error: BaseException | str) -> str:
    """A user error's message as one line (its lines joined), so stderr holds one line."""
    text = str(error).strip() or type(error).__name__
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def _user_errors() -> tuple[type[BaseException], ...]:
    """Errors caused by a choice the user can fix (printed without a traceback, exit 2)."""
    from lrm_engine.backend_resolver import KernelsUnavailableError
    from lrm_engine.registry import UnknownComponentError

    from lrm_engine.core.tree import TreeCapacityError
    from lrm_engine.errors import UserError

    errors: list[type[BaseException]] = [UnknownComponentError, KernelsUnavailableError, UserError,
                                         TreeCapacityError]
    try:
        from lrm_engine.models.loading import ModelLoadError

        errors.append(ModelLoadError)
    except ImportError:
        pass
    try:
        from lrm_engine.ops import BackendUnavailableError

        errors.append(BackendUnavailableError)
    except ImportError:
        pass
    return tuple(errors)


def parse_args(args: list[str]) -> tuple[str, set[str], list[str]]:
    """Split argv into (verb, flags, overrides). Flags: multirun, json, help."""
    verb = DEFAULT_VERB
    if args and (args[0] in VERBS or args[0] in HIDDEN_VERBS):
        verb = args.pop(0)
    elif args and not args[0].startswith("-") and not _looks_like_override(args[0]):
        raise UsageError(f"unknown verb {args[0]!r}; verbs are {', '.join(VERBS)}")
    flags: set[str] = set()
    overrides: list[str] = []
    names = {"-m": "multirun", "--multirun": "multirun", "--json": "json",
             "-h": "help", "--help": "help"}
    for a in args:
        if a in names:
            flags.add(names[a])
        elif a.startswith("-"):
            raise UsageError(f"unknown option {a!r}")
        else:
            overrides.append(a)
    return verb, flags, overrides


def _looks_like_override(arg: str) -> bool:
    """``key=value``, ``+key=value``, ``++key=value`` or ``~key``."""
    return "=" in arg or arg.startswith(("+", "~"))


def expand_multirun(overrides: list[str]) -> list[list[str]]:
    """One override list per combination of the sweeps (``a=1,2 b=x,y`` -> 4 jobs)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    from lrm_engine.composition import ConfigError

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException as e:
        raise ConfigError(str(e)) from e
    axes: list[list[str]] = []
    for ov in parsed:
        if ov.is_sweep_override():
            key = ov.get_key_element()
            try:
                values = list(ov.sweep_string_iterator())
            except HydraException as e:
                raise ConfigError(f"cannot sweep {ov.input_line!r}: {e}") from e
            axes.append([f"{key}={v}" for v in values])
        else:
            axes.append([ov.input_line])
    return [list(combo) for combo in itertools.product(*axes)]


def run_verb(verb: str, overrides: list[str], out: TextIO | None = None) -> dict[str, Any]:
    """Compose, check availability, build, and run one job of ``verb``; print its results."""
    from omegaconf import OmegaConf

    from lrm_engine.components import build
    from lrm_engine.composition import compose
    from lrm_engine.plugin_manager import get_plugin_manager
    from lrm_engine.validation import check_runtime

    out = out or sys.stdout
    cfg = compose(overrides)
    if verb == "config":
        out.write(OmegaConf.to_yaml(cfg))
        return {}
    module = check_available(verb, cfg)
    check_runtime(cfg)  # devices present, output folder writable (what only this machine knows)
    components = build(cfg)
    reason = getattr(module, "unavailable", lambda c, comps: None)(cfg, components)
    if reason:
        raise NotAvailableError(reason)
    pm = get_plugin_manager()
    pm.hook.lrm_run_start(cfg=cfg, components=components)
    results = dict(module.main(cfg, components))
    pm.hook.lrm_run_end(cfg=cfg, results=results)
    out.write(json.dumps(results, default=str) + "\n")
    return results


def check_available(verb: str, cfg: DictConfig) -> Any:
    """The verb's module, or :class:`NotAvailableError` naming everything that is missing.

    Missing: the implementation module ``lrm_engine.verbs.<verb>``, a registry with no entry
    for a kind the verb needs. A kind that is registered but not selected in ``cfg`` is a usage
    error naming the options to choose from.
    """
    from lrm_engine.composition import group_options
    from lrm_engine.plugin_manager import registries

    missing: list[str] = []
    regs = registries()
    needs = VERB_NEEDS.get(verb, ())
    for kind in needs:
        if len(regs[kind]) == 0:
            noun = regs[kind].noun
            missing.append(f"no {noun} is registered ({PROVIDED_BY[kind]})")
    module_name = f"lrm_engine.verbs.{verb}"
    if importlib.util.find_spec(module_name) is None:
        missing.append(f"the `{verb}` verb is not implemented ({module_name.replace('.', '/')}.py)")
    if missing:
        raise NotAvailableError("; ".join(missing))
    unselected = []
    for kind in VERB_SELECTS.get(verb, needs):
        group = GROUP_OF_KIND[kind]
        if cfg.get(group) is None:
            options = ", ".join(group_options(group)) or "(none)"
            unselected.append(f"{group}=<option> (options: {options})")
    if unselected:
        raise UsageError(f"lrm {verb} needs " + " and ".join(unselected), show_usage=False)
    return importlib.import_module(module_name)


def print_plugins(as_json: bool = False, out: TextIO | None = None) -> None:
    """Every plugin, its version and what it registers; and every public registry's names."""
    from lrm_engine.plugin_manager import get_plugin_manager
    from lrm_engine.registry import PUBLIC_KINDS

    out = out or sys.stdout
    pm = get_plugin_manager()
    infos = pm.plugin_infos()
    regs = {kind: pm.registries[kind].names() for kind in PUBLIC_KINDS}
    if as_json:
        doc = {
            "plugins": [
                {"name": i.name, "version": i.version, "distribution": i.distribution,
                 "registers": i.registers, "configs": i.configs}
                for i in infos
            ],
            "registries": regs,
        }
        out.write(json.dumps(doc, indent=2) + "\n")
        return
    out.write(f"Plugins ({len(infos)}):\n")
    for i in infos:
        dist = "" if i.distribution == "lrm_engine" else f"  [{i.distribution}]"
        out.write(f"  {i.name} {i.version}{dist}\n")
        for kind, names in i.registers.items():
            if names:
                out.write(f"    {kind}: {', '.join(names)}\n")
        if i.configs:
            out.write(f"    configs: {', '.join(i.configs)}\n")
    out.write("Registries:\n")
    for kind, names in regs.items():
        out.write(f"  {kind}: {', '.join(names) if names else '(none)'}\n")
    if pm.disabled:
        out.write(f"Disabled (LRM_ENGINE_DISABLE_PLUGINS): {', '.join(pm.disabled)}\n")
    if pm.missing_builtins:
        out.write(f"Missing built-in modules: {', '.join(pm.missing_builtins.values())}\n")


if __name__ == "__main__":
    raise SystemExit(main())
