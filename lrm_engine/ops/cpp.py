"""The C++ CPU backend ("cpp"): lrm_engine._C kernels on contiguous CPU tensors.

Semantics are exactly those of lrm_engine/ops/reference.py: indices bit for bit, floats to the
last bit wherever libm agrees with torch (select computes in float64, backup accumulates in
float32 in k order, the segment ops sum in index order). The checks and the per-tree pointer
cache live in lrm_engine/ops/_pointer_backend.py.

Importing this module raises ImportError (with the reason) when lrm_engine._C is not built; the
dispatcher turns that into its one-time warning or BackendUnavailableError.
"""

from __future__ import annotations

import torch

try:
    from lrm_engine import _C
except ImportError as exc:  # pragma: no cover - depends on the build
    raise ImportError(
        f"the compiled extension lrm_engine._C could not be imported ({exc}); build it with "
        "`pip install --no-build-isolation -e .` (needs a C++17 compiler, cmake and pybind11)"
    ) from exc

from lrm_engine.ops._pointer_backend import TREE_FIELDS, PointerBackend

__all__ = ["CppBackend", "TREE_FIELDS"]


class CppBackend(PointerBackend):
    """Tree ops on CPU through the compiled lrm_engine._C kernels (single-threaded, deterministic)."""

    name = "cpp"
    _m = _C
    _extra_is_static = True  # no trailing kernel arguments

    def _check_device(self, t: torch.Tensor, what: str, device) -> None:
        if not t.is_cpu:
            raise TypeError(
                f"kernel backend 'cpp' runs on CPU tensors, but {what} is on {t.device}; use "
                "kernels=triton or kernels=cuda (or kernels=auto) for GPU tensors"
            )
