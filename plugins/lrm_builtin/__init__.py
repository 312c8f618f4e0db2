"""First-party plugins shipped with lrm_engine.

Each module named in BUILTIN_PLUGINS is a pluggy plugin (a module of ``@hookimpl`` functions).
The plugin manager registers them through the same hooks a third-party plugin uses; they are
registered under the name given here, which is what ``LRM_ENGINE_DISABLE_PLUGINS`` matches.
"""

# plugin name -> module path
BUILTIN_PLUGINS: dict[str, str] = {
    "builtin.kernels": "lrm_builtin.kernels",
    "builtin.tasks": "lrm_builtin.tasks",
    "builtin.search": "lrm_builtin.search",
    "builtin.annotators": "lrm_builtin.annotators",
}
