"""Compose the configuration: the one path the CLI and Python embedding share.

:func:`compose` loads ``config.yaml`` from the package (``pkg://lrm_engine.conf``) plus the
options and schemas plugins stored in Hydra's ConfigStore, applies Hydra overrides, and returns
the composed :class:`omegaconf.DictConfig` without Hydra's own ``hydra`` node. It uses Hydra's
config loader directly (not ``@hydra.main`` nor the global ``initialize`` state), so it works
inside another Hydra application and never changes the working directory.

When composition fails, :class:`ConfigError` carries Hydra's message plus the valid options
(or keys) for what was wrong; the CLI prints it and exits with code 2.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from lrm_engine.config import GROUPS, SCHEMA_PREFIX

if TYPE_CHECKING:
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from omegaconf import DictConfig

# Where the shipped configuration lives (conf/ in the source tree, lrm_engine.conf installed).
CONFIG_MODULE = "lrm_engine.conf"
PRIMARY_CONFIG = "config"
# Groups that Hydra's loader lists but that are not user-facing options.
_HIDDEN_GROUPS = ("hydra", SCHEMA_PREFIX)


class ConfigError(Exception):
    """Composition failed: an invalid override, an unknown option, group or key.

    ``str(error)`` is Hydra's message followed by the valid choices, ready to print.
    """


def _loader() -> ConfigLoaderImpl:
    """A Hydra config loader over the package's conf/ and the ConfigStore (plugins included)."""
    from hydra import version
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra._internal.utils import create_config_search_path

    from lrm_engine.plugin_manager import get_plugin_manager

    get_plugin_manager()  # plugins' lrm_register_configs must have run before loading
    if version.getbase() is None:
        version.setbase("1.3")
    return ConfigLoaderImpl(config_search_path=create_config_search_path(f"pkg://{CONFIG_MODULE}"))


def config_groups() -> list[str]:
    """Every user-facing config group: the standard ones plus any a plugin added (sorted after)."""
    found = [g for g in _loader().list_groups("") if g not in _HIDDEN_GROUPS]
    return list(GROUPS) + sorted(g for g in found if g not in GROUPS)


def group_options(group: str) -> list[str]:
    """The options of a config group (YAML files and ConfigStore entries; never ``schema/*``)."""
    if group.split("/", 1)[0] in _HIDDEN_GROUPS:
        return []
    return list(_loader().get_group_options(group))


def all_options() -> dict[str, list[str]]:
    """``{group: [options]}`` for every user-facing group (empty list: no option yet)."""
    loader = _loader()
    return {g: list(loader.get_group_options(g)) for g in config_groups()}


def compose(overrides: Sequence[str] = (), config_name: str = PRIMARY_CONFIG) -> DictConfig:
    """Compose the configuration exactly as the ``lrm`` command does.

    ``overrides`` are Hydra overrides (``"task=arith"``, ``"task.steps=6"``, ``"+x=1"``).
    Raises :class:`ConfigError` (Hydra's message + the valid options or keys) on failure.
    """
    from hydra.errors import HydraException
    from hydra.types import RunMode
    from omegaconf import DictConfig, OmegaConf, open_dict
    from omegaconf.errors import OmegaConfBaseException

    overrides = list(overrides)
    try:
        cfg = _loader().load_configuration(
            config_name=config_name, overrides=overrides, run_mode=RunMode.RUN, from_shell=True
        )
    except (HydraException, OmegaConfBaseException, ValueError) as e:
        raise ConfigError(_explain(e, overrides, config_name)) from e
    assert isinstance(cfg, DictConfig)
    with open_dict(cfg):
        cfg.pop("hydra", None)
    OmegaConf.set_readonly(cfg, False)
    return cfg


def _hydra_message(e: BaseException) -> str:
    """Hydra's message, with the underlying OmegaConf cause (which names the bad value/key)."""
    msg = str(e).strip()
    cause = e.__cause__
    if cause is not None and str(cause).strip() and str(cause).strip() not in msg:
        msg += "\n" + str(cause).strip()
    return msg


def _explain(e: BaseException, overrides: list[str], config_name: str) -> str:
    """Hydra's message plus valid options/keys for each override that names something unknown."""
    from hydra.errors import MissingConfigException, OverrideParseException

    hints: list[str] = []
    try:
        hints = _hints(overrides, config_name)
    except Exception:  # hints are best effort; Hydra's message is always shown
        hints = []
    if not hints and isinstance(e, (MissingConfigException, OverrideParseException)):
        hints = [_groups_summary()]
    # (a value of the wrong type gets no hint: OmegaConf's message names the expected type)
    from lrm_engine.plugin_manager import DISABLE_ENV, get_plugin_manager

    pm = get_plugin_manager()
    if pm.disabled or pm.missing_builtins:
        off = sorted(set(pm.disabled) | set(pm.missing_builtins))
        hints.append(
            f"Note: plugins {', '.join(off)} are not loaded ({DISABLE_ENV} or missing module); "
            f"options whose schemas they store cannot be composed: select another option, "
            f"or none (e.g. ~task)."
        )
    message = _hydra_message(e)
    return message + ("\n\n" + "\n".join(hints) if hints else "")


def _groups_summary() -> str:
    """One line per config group with its options."""
    lines = ["Config groups and their options:"]
    for group, options in all_options().items():
        lines.append(f"  {group}: {', '.join(options) if options else '(no options yet)'}")
    return "\n".join(lines)


def _hints(overrides: list[str], config_name: str) -> list[str]:
    """Valid choices for every override that names an unknown group, option or key."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException
    from hydra.types import RunMode
    from omegaconf import DictConfig
    from omegaconf.errors import OmegaConfBaseException

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException:
        return [_groups_summary()]
    options = all_options()
    hints: list[str] = []
    group_choices: list[str] = []
    key_overrides = []
    for ov in parsed:
        key = ov.key_or_group
        if key in options or ov.package is not None:
            group = key
            if ov.is_delete():
                continue
            values = [str(v) for v in ov.sweep_string_iterator()] if ov.is_sweep_override() \
                else [ov.get_value_element_as_str()]
            bad = [v for v in values if v not in options.get(group, []) and v != "null"]
            if bad:
                valid = ", ".join(options[group]) if options.get(group) else "(no options yet)"
                hints.append(f"Valid options for {group}: {valid}")
            else:
                group_choices.append(ov.input_line)
        else:
            key_overrides.append(ov)
    if not key_overrides:
        return hints
    # Compose with the group choices only, then check each key override's path against it.
    try:
        base = _loader().load_configuration(
            config_name=config_name, overrides=group_choices, run_mode=RunMode.RUN,
            from_shell=True,
        )
    except (HydraException, OmegaConfBaseException):
        return hints or [_groups_summary()]
    for ov in key_overrides:
        if ov.is_add() or ov.is_force_add():
            continue
        parts = ov.key_or_group.split(".")
        node = base
        for i, part in enumerate(parts):
            if not isinstance(node, DictConfig) or part not in node:
                where = ".".join(parts[:i]) or "the top level"
                keys = [k for k in (node.keys() if isinstance(node, DictConfig) else [])
                        if k != "hydra"]
                if i == 0 and parts[0] in options:
                    group = parts[0]
                    valid = ", ".join(options[group]) or "(no options yet)"
                    hints.append(
                        f"'{group}' has no option selected; choose one first, e.g. "
                        f"{group}=<option> (options: {valid})"
                    )
                elif i == 0:
                    hints.append(
                        f"'{parts[0]}' is neither a config group nor a key. Config groups: "
                        f"{', '.join(options)}; top-level keys: {', '.join(keys) or '(none)'}"
                    )
                else:
                    hints.append(f"Valid keys in {where}: {', '.join(map(str, keys))}")
                break
            node = node[part]
    return hints
