"""Kernel backends and the dispatcher that picks one per device.

Every backend implements the same six ops with the same signatures and semantics (the
specification is lrm_engine/ops/reference.py):

    select(tree, num_leaves, rule="puct", c1=1.25, c2=19652.0, uct_c=sqrt(2), virtual_loss=1.0)
        -> (leaf_node [B, K] int32, leaf_action [B, K] int32)
    expand(tree, leaf_node [B, K] int32, leaf_action [B, K] int32, child_prior [B, K, A] float32,
           terminal [B, K] bool | None = None) -> new_node [B, K] int32
    backup(tree, nodes [B, K] int32, values [B, K] float32, step_scores [B, K] float32 | None = None,
           discount=1.0) -> None
    topk_per_tree(scores [B, M] float32, k, valid [B, M] bool | None = None)
        -> (values [B, k] float32, index [B, k] int32)
    segment_reduce(values [T] float32, offsets [S + 1] int64, op) -> [S] float32
    group_normalize(x [T] float32, offsets [G + 1] int64, eps=1e-4, unbiased=True) -> [T] float32

`expand` never checks capacity: call `tree.ensure_capacity(K)` first (the module-level
`lrm_engine.ops.expand` does).
"""

from __future__ import annotations

import importlib
import warnings
from typing import Any, Callable

import torch

BACKENDS = ("reference", "cpp", "triton", "cuda")


class BackendUnavailableError(RuntimeError):
    """A kernel backend was asked for that is not built or cannot run here."""


class ReferenceBackend:
    """The pure-torch specification; runs on any device."""

    name = "reference"

    def __init__(self) -> None:
        from lrm_engine.ops import reference

        self.select = reference.select
        self.expand = reference.expand
        self.backup = reference.backup
        self.topk_per_tree = reference.topk_per_tree
        self.segment_reduce = reference.segment_reduce
        self.group_normalize = reference.group_normalize


# name -> (module path, class name, why it may be missing)
_LOADERS: dict[str, tuple[str, str]] = {
    "cpp": ("lrm_engine.ops.cpp", "CppBackend"),
    "triton": ("lrm_engine.ops.triton", "TritonBackend"),
    "cuda": ("lrm_engine.ops.cuda", "CudaBackend"),
}
_cache: dict[str, Any] = {}
_errors: dict[str, str] = {}
_warned_missing_cpp = False


def _load(name: str) -> Any | None:
    if name in _cache:
        return _cache[name]
    if name in _errors:
        return None
    if name == "reference":
        _cache[name] = ReferenceBackend()
        return _cache[name]
    module, cls = _LOADERS[name]
    try:
        backend = getattr(importlib.import_module(module), cls)()
    except Exception as exc:  # ImportError, missing extension, no GPU, ...
        _errors[name] = f"{type(exc).__name__}: {exc}"
        return None
    _cache[name] = backend
    return backend


def available_backends() -> list[str]:
    """Names of the backends that are built and can run on this machine."""
    return [n for n in BACKENDS if _load(n) is not None]


def get_backend(name: str = "auto", device: torch.device | str | None = None) -> Any:
    """The backend ``name``; "auto" picks cpp on CPU and triton on CUDA (reference as fallback)."""
    global _warned_missing_cpp
    if name == "auto":
        dev = torch.device(device) if device is not None else torch.device("cpu")
        order = ("triton", "cuda", "reference") if dev.type == "cuda" else ("cpp", "reference")
        for cand in order:
            b = _load(cand)
            if b is not None:
                if dev.type == "cpu" and cand == "reference" and not _warned_missing_cpp:
                    _warned_missing_cpp = True
                    warnings.warn(
                        "lrm_engine: the compiled extension lrm_engine._C is missing "
                        f"({_errors.get('cpp', 'not built')}); using the pure-torch reference "
                        "kernels. Build it with `pip install --no-build-isolation -e .` "
                        "(needs a C++17 compiler, cmake and pybind11).",
                        RuntimeWarning,
                        stacklevel=2,
                    )
                return b
        raise BackendUnavailableError("no kernel backend can run here")  # pragma: no cover
    if name not in BACKENDS:
        raise BackendUnavailableError(
            f"unknown kernel backend {name!r}; choose one of: auto, {', '.join(BACKENDS)}"
        )
    b = _load(name)
    if b is None:
        raise BackendUnavailableError(
            f"kernel backend {name!r} is not available here ({_errors.get(name)}); "
            f"available: {', '.join(available_backends())}"
        )
    return b


def backend_error(name: str) -> str | None:
    """Why a backend failed to load (None if it loaded or was not tried)."""
    _load(name)
    return _errors.get(name)


def _reset_cache_for_tests() -> None:
    global _warned_missing_cpp
    _cache.clear()
    _errors.clear()
    _warned_missing_cpp = False


Op = Callable[..., Any]
