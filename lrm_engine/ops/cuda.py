"""The CUDA C++ backend ("cuda"): lrm_engine._C_cuda kernels on contiguous CUDA tensors.

Built only when asked for (``pip install --no-build-isolation -e . -Ccmake.define.LRM_ENGINE_CUDA=ON``,
needs nvcc). One thread per tree for select / expand / backup, one per row / segment / group for
the others; the per-tree logic is the same header code as the C++ CPU kernels
(csrc/include/lrm/), so the semantics are those of lrm_engine/ops/reference.py. Kernels launch
asynchronously on torch's current stream of the tensors' device.

The kernels cannot raise on bad input; instead (see csrc/cuda/cuda_ops.h): `expand` leaves a tree
whose leaves are out of range or would overflow its slots unchanged and returns -1 for its row
(so call ``tree.ensure_capacity(K)`` first, as ``lrm_engine.ops.expand`` does), `backup` skips
out-of-range nodes, and segments with bad offsets reduce to NaN.

Importing this module raises ImportError when lrm_engine._C_cuda is not built; constructing
`CudaBackend` raises RuntimeError when no CUDA device can run it. The dispatcher reports both.
"""

from __future__ import annotations

import torch

try:
    from lrm_engine import _C_cuda
except ImportError as exc:  # pragma: no cover - depends on the build
    raise ImportError(
        f"the CUDA extension lrm_engine._C_cuda is not built ({exc}); build it with "
        "`pip install --no-build-isolation -e . -Ccmake.define.LRM_ENGINE_CUDA=ON` (needs nvcc)"
    ) from exc

from lrm_engine.ops._pointer_backend import PointerBackend

__all__ = ["CudaBackend"]


class CudaBackend(PointerBackend):
    """Tree ops on CUDA tensors through the compiled lrm_engine._C_cuda kernels."""

    name = "cuda"
    _m = _C_cuda

    def __init__(self) -> None:
        super().__init__()
        if not torch.cuda.is_available():
            raise RuntimeError(
                "kernel backend 'cuda' needs a CUDA device, and torch sees none "
                "(torch.cuda.is_available() is False)"
            )
        # Raises RuntimeError naming the problem, e.g. a driver older than the CUDA runtime the
        # module was compiled with.
        if _C_cuda.device_count() < 1:
            raise RuntimeError("kernel backend 'cuda': the CUDA runtime finds no device")

    def _check_device(self, t: torch.Tensor, what: str, device) -> None:
        if not t.is_cuda:
            raise TypeError(
                f"kernel backend 'cuda' runs on CUDA tensors, but {what} is on {t.device}; use "
                "kernels=cpp (or kernels=auto) for CPU tensors"
            )
        if device is not None and t.device != device:
            raise ValueError(f"{what} is on {t.device}, but the op runs on {device}")

    def _extra(self, device: torch.device) -> tuple:
        index = device.index if device.index is not None else torch.cuda.current_device()
        return (torch.cuda.current_stream(index).cuda_stream, index)
