"""Compose the configuration: the one path the CLI and Python embedding share.

:func:`compose` loads ``config.yaml`` from the package (``pkg://lrm_engine.conf``) plus the
options and schemas plugins stored in Hydra's ConfigStore, applies Hydra overrides, and returns
the composed :class:`omegaconf.DictConfig` without Hydra's own ``hydra`` node. It uses Hydra's
config loader directly (not ``@hydra.main`` nor the global ``initialize`` state), so it works
inside another Hydra application and never changes the working directory.

When composition fails, or the composed config breaks a rule of lrm_engine/validation.py,
:class:`ConfigError` carries one line: the override or field at fault, its value and the valid
options, keys or range; the CLI prints it and exits with code 2.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from lrm_engine.config import GROUPS, SCHEMA_PREFIX
from lrm_engine.errors import UserError

if TYPE_CHECKING:
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from omegaconf import DictConfig

# Where the shipped configuration lives (conf/ in the source tree, lrm_engine.conf installed).
CONFIG_MODULE = "lrm_engine.conf"
PRIMARY_CONFIG = "config"
# Groups that Hydra's loader lists but that are not user-facing options.
_HIDDEN_GROUPS = ("hydra", SCHEMA_PREFIX)


class ConfigError(UserError):
    """Composition failed: an invalid override, an unknown option, group or key, or a value
    outside what its field accepts (lrm_engine/validation.py).

    ``str(error)`` is one line naming the override or field, the value and what is allowed,
    ready to print (``search=bogus: unknown option of search; options: beam, best_of_n, ...``).
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
    The composed config is validated (lrm_engine/validation.py: value ranges, known keys).
    Raises :class:`ConfigError`, one line naming what is wrong and what is allowed, on failure.
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
    from lrm_engine.validation import validate

    validate(cfg)
    return cfg


def _first_line(e: BaseException) -> str:
    """Hydra's first line, with the first line of the OmegaConf cause that names the value."""
    msg = (str(e).strip().splitlines() or [type(e).__name__])[0].strip()
    cause = e.__cause__
    if cause is not None and str(cause).strip():
        first = str(cause).strip().splitlines()[0].strip()
        if first not in msg:
            msg += f": {first}"
    return msg


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:]


def _explain(e: BaseException, overrides: list[str], config_name: str) -> str:
    """One line: the override at fault, what is wrong with it, and the valid choices."""
    try:
        line = _diagnose(e, overrides, config_name)
    except Exception:  # the diagnosis is best effort; Hydra's own first line is the fallback
        line = None
    line = line or _first_line(e)
    note = _plugins_note()
    return line + (f"; {note}" if note else "")


def _plugins_note() -> str:
    """Why options may be missing: plugins that are disabled or whose module is missing."""
    from lrm_engine.plugin_manager import DISABLE_ENV, get_plugin_manager

    pm = get_plugin_manager()
    if not (pm.disabled or pm.missing_builtins):
        return ""
    off = sorted(set(pm.disabled) | set(pm.missing_builtins))
    return (f"note: plugins {', '.join(off)} are not loaded ({DISABLE_ENV} or missing module), "
            f"so the options whose schemas they store cannot be composed (select another, or none: ~<group>)")


def _diagnose(e: BaseException, overrides: list[str], config_name: str) -> str | None:
    """The one-line diagnosis of a failed composition (None: nothing better than Hydra's line)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException
    from omegaconf.errors import ValidationError

    parser = OverridesParser.create()
    parsed = []
    for text in overrides:
        try:
            parsed.extend(parser.parse_overrides([text]))
        except HydraException:
            return (f"{text!r}: not an override; write group=option, key=value, +key=value or "
                    f"~key (one per argument)")
    if str(e).startswith("Ambiguous value for argument"):
        for ov in parsed:
            if ov.is_sweep_override():
                key = ov.get_key_element()
                return (f"{ov.input_line}: several values sweep only with --multirun (-m); "
                        f"a list is {key}=[...], a string with commas is quoted: {key}='...'")
    options = all_options()
    group_choices: list[str] = []
    key_overrides = []
    for ov in parsed:
        key = ov.key_or_group
        if key in options or ov.package is not None:
            if ov.is_delete():
                continue
            values = [str(v) for v in ov.sweep_string_iterator()] if ov.is_sweep_override() \
                else [ov.get_value_element_as_str()]
            bad = [v for v in values if v not in options.get(key, []) and v != "null"]
            if bad:
                valid = ", ".join(options.get(key, [])) or "(none yet)"
                return f"{ov.input_line}: unknown option of {key}; options: {valid}"
            group_choices.append(ov.input_line)
        else:
            key_overrides.append(ov)
    cause = e.__cause__
    if isinstance(cause, ValidationError):
        full_key = getattr(cause, "full_key", None)
        where = next((ov.input_line for ov in key_overrides if ov.key_or_group == full_key),
                     full_key or "")
        first = str(cause).strip().splitlines()[0].strip()
        return f"{where}: {_lower_first(first)}"
    return _unknown_key(key_overrides, group_choices, config_name, options)


def _unknown_key(key_overrides, group_choices: list[str], config_name: str,
                 options: dict[str, list[str]]) -> str | None:
    """The first key override whose path does not exist, with the keys that do."""
    from hydra.errors import HydraException
    from hydra.types import RunMode
    from omegaconf import DictConfig
    from omegaconf.errors import OmegaConfBaseException

    if not key_overrides:
        return None
    try:  # the config with the group choices only: the key overrides are checked against it
        base = _loader().load_configuration(
            config_name=config_name, overrides=group_choices, run_mode=RunMode.RUN,
            from_shell=True,
        )
    except (HydraException, OmegaConfBaseException):
        return None
    for ov in key_overrides:
        if ov.is_add() or ov.is_force_add():
            continue
        parts = ov.key_or_group.split(".")
        node = base
        for i, part in enumerate(parts):
            if isinstance(node, DictConfig) and part in node:
                node = node[part]
                continue
            keys = [str(k) for k in (node.keys() if isinstance(node, DictConfig) else []) if k != "hydra"]
            what = f"~{ov.key_or_group}" if ov.is_delete() else ov.input_line
            if i == 0 and parts[0] in options:
                valid = ", ".join(options[parts[0]]) or "(none yet)"
                return (f"{what}: {parts[0]} has no option selected; choose one first with "
                        f"{parts[0]}=<option> (options: {valid})")
            if ov.is_delete():
                where = ".".join(parts[:i]) or "the top level"
                return (f"{what}: there is no '{part}' to delete; keys of {where}: "
                        f"{', '.join(keys) or '(none)'}")
            if i == 0:
                return (f"{what}: '{parts[0]}' is neither a config group nor a key; groups: "
                        f"{', '.join(options)}; top-level keys: {', '.join(keys) or '(none)'}")
            where = ".".join(parts[:i])
            return f"{what}: unknown key '{part}'; keys of {where}: {', '.join(keys) or '(none)'}"
    return None
