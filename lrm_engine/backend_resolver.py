"""Resolve a ``kernels`` config node to a tree-op backend object.

The internal "kernels" registry holds one entry, "ops", whose factory is :func:`resolve_kernels`:
it defers to ``lrm_engine.ops.get_backend`` (imported only when called, so configuration and
the CLI never import torch or the compiled extension for nothing).
"""

from __future__ import annotations

from typing import Any


class KernelsUnavailableError(ImportError):
    """``lrm_engine.ops`` (the tree ops and their dispatcher) cannot be imported."""


def resolve_kernels(backend: str = "auto", device: str = "cpu") -> Any:
    """The backend object ``lrm_engine.ops.get_backend(backend, device=device)`` returns.

    Raises ``lrm_engine.ops.BackendUnavailableError`` (naming the backends that were built)
    when ``backend`` was not built, and :class:`KernelsUnavailableError` when the ops package
    itself is missing.
    """
    try:
        from lrm_engine.ops import get_backend
    except ImportError as e:
        raise KernelsUnavailableError(
            f"cannot resolve kernels={backend}: lrm_engine.ops.get_backend is not available "
            f"({e}). Reinstall lrm_engine (pip install -e .) or report a broken installation."
        ) from e
    return get_backend(backend, device=device)
