"""Implementations of the ``lrm`` verbs, one module per verb (``lrm_engine/verbs/<verb>.py``).

The CLI looks a verb up here; while its module is missing the verb answers "not available yet"
(exit code 2), so a verb turns on by itself when its module lands. A verb module defines:

- ``main(cfg: DictConfig, components: Components) -> Mapping[str, Any]``: do the work and
  return JSON-serialisable results (printed as one JSON line, passed to ``lrm_run_end``).
  Long verbs call ``get_plugin_manager().hook.lrm_iteration_end(iteration=, metrics=)`` at
  the end of each outer iteration, never inside a hot loop.
- optionally ``unavailable(cfg: DictConfig, components: Components) -> str | None``: a reason
  why this verb cannot run with these components (e.g. the task has no evaluator), or None.

Which registries a verb needs is declared in :data:`lrm_engine.cli.VERB_NEEDS`.
"""
