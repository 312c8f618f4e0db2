"""Triton backend of the tree ops (GPU; CPU only under ``TRITON_INTERPRET=1``, set before import).

Exports `TritonBackend` (name "triton"). Constructing it raises RuntimeError, saying why, on a
machine with neither a CUDA GPU nor the Triton interpreter; the dispatcher records that as
"unavailable".
"""

from lrm_engine.ops.triton.backend import INTERPRETED, TritonBackend

__all__ = ["TritonBackend", "INTERPRETED"]
