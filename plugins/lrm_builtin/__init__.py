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
    "builtin.policies": "lrm_builtin.policies",
    "builtin.rewards": "lrm_builtin.rewards",
    "builtin.objectives": "lrm_builtin.objectives",
    "builtin.annotators": "lrm_builtin.annotators",
}
