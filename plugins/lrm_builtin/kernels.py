"""Built-in plugin "builtin.kernels": the ``kernels`` config options.

One option per tree-op backend (auto, reference, cpp, triton, cuda). The YAML files in
conf/kernels/ are typed by the schemas stored here at ``schema/kernels/<backend>``. The backend
itself is resolved at build time by ``lrm_engine.ops.get_backend`` (through the internal
"kernels" registry entry "ops"), which fails with the list of built backends when asked for one
that was not built.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lrm_engine.config import KernelBackend, KernelsConfig, schema_group
from lrm_engine.hookspecs import hookimpl

if TYPE_CHECKING:
    from hydra.core.config_store import ConfigStore


@hookimpl
def lrm_register_configs(config_store: ConfigStore) -> None:
    """Store ``schema/kernels/<backend>`` for every backend."""
    for backend in KernelBackend:
        config_store.store(
            group=schema_group("kernels"),
            name=backend.value,
            node=KernelsConfig(backend=backend),
        )
