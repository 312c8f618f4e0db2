"""Counter-based random numbers: every draw is a pure function of (seed, problem, node, token).

Sampling from one ``torch.Generator`` per call makes a draw depend on everything that ran
before it in the process (which problems shared the batch, whether the run was resumed). Here
a draw depends only on *where* it happens:

- every tree's root key is ``problem_key(seed, problem_id)`` (``SearchContext.new_tree``);
- a child's key is ``child_key(parent_key, action)`` (set by the policy when it allocates the
  child), so a node's key is a hash of the path of actions that leads to it;
- the t-th token of a child step is drawn with the uniform ``uniform(mix(child_key ^ stream), t)``
  by inverse-CDF over the warped distribution (``lrm_engine.models.sampling.sample``).

Hence the same problem gives the same samples whatever the batch size, the order of problems,
a resume, or (later) the number of workers. The hash is SplitMix64 (Steele et al., 2014) over
int64 tensors (wrapping arithmetic; right shifts made logical by masking);
:func:`splitmix64_py` is its pure-Python twin, the test oracle.
"""

from __future__ import annotations

import hashlib

import torch

_MASK64 = (1 << 64) - 1


def _signed(x: int) -> int:
    """A 64-bit unsigned constant as the int64 torch stores."""
    x &= _MASK64
    return x - (1 << 64) if x >= 1 << 63 else x


_GOLDEN = _signed(0x9E3779B97F4A7C15)
_M1 = _signed(0xBF58476D1CE4E5B9)
_M2 = _signed(0x94D049BB133111EB)


def _lsr(x: torch.Tensor, s: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's >> is arithmetic)."""
    return (x >> s) & ((1 << (64 - s)) - 1)


def splitmix64(x: torch.Tensor) -> torch.Tensor:
    """SplitMix64 finaliser of int64 tensor x (any shape) -> int64 of the same shape."""
    z = x.to(torch.int64) + _GOLDEN
    z = (z ^ _lsr(z, 30)) * _M1
    z = (z ^ _lsr(z, 27)) * _M2
    return z ^ _lsr(z, 31)


def splitmix64_py(x: int) -> int:
    """Pure-Python SplitMix64 (unsigned 64-bit arithmetic), returned as a signed int64."""
    z = (x + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return _signed(z ^ (z >> 31))


def mix(key: torch.Tensor, value: torch.Tensor | int) -> torch.Tensor:
    """A new key from ``key`` and ``value`` (both int64): splitmix64(key ^ splitmix64(value))."""
    v = value if isinstance(value, torch.Tensor) else torch.tensor(int(value), dtype=torch.int64)
    return splitmix64(key.to(torch.int64) ^ splitmix64(v.to(torch.int64)))


def problem_key(seed: int, problem_id: str) -> int:
    """The root key of a problem's tree: stable across processes and machines (blake2b of the id)."""
    h = int.from_bytes(hashlib.blake2b(str(problem_id).encode("utf-8"), digest_size=8).digest(), "little")
    return int(mix(torch.tensor(_signed(h)), int(seed)))


def problem_keys(seed: int, problem_ids) -> torch.Tensor:
    """[B] int64 root keys of a batch of problems."""
    return torch.tensor([problem_key(seed, i) for i in problem_ids], dtype=torch.int64)


def default_root_keys(batch_size: int) -> torch.Tensor:
    """[B] int64 root keys of a tree built without problem ids (each tree its own stream)."""
    return splitmix64(torch.arange(batch_size, dtype=torch.int64))


def child_key(parent_key: torch.Tensor, action: torch.Tensor | int) -> torch.Tensor:
    """Key of the child reached by ``action`` from a node with ``parent_key``."""
    return mix(parent_key, action)


def uniform(key: torch.Tensor) -> torch.Tensor:
    """float64 in [0, 1) from int64 keys (the top 53 bits of splitmix64(key))."""
    return _lsr(splitmix64(key), 11).to(torch.float64) * (1.0 / (1 << 53))
