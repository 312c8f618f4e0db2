"""The token arena: every node's step tokens stored once, addressed by (offset, length).

``BatchedTree.token_offset[b, n]`` / ``token_length[b, n]`` point into one arena per tree batch.
The arena only grows (slots are never reused within a search, like the tree's node slots).
"""

from __future__ import annotations

import torch


class TokenArena:
    """A growable flat int64 buffer of token ids."""

    def __init__(self, capacity: int = 4096):
        self._buf = torch.empty(max(1, capacity), dtype=torch.int64)
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def append(self, tokens) -> int:
        """Store ``tokens`` (list of ints or 1-D tensor); return their offset."""
        t = torch.as_tensor(tokens, dtype=torch.int64).reshape(-1)
        n = t.numel()
        need = self._size + n
        if need > self._buf.numel():
            cap = self._buf.numel()
            while cap < need:
                cap *= 2
            buf = torch.empty(cap, dtype=torch.int64)
            buf[: self._size] = self._buf[: self._size]
            self._buf = buf
        off = self._size
        self._buf[off:need] = t
        self._size = need
        return off

    def get(self, offset: int, length: int) -> torch.Tensor:
        """The tokens at [offset, offset + length) (a view; do not modify)."""
        if offset < 0 or length < 0 or offset + length > self._size:
            raise IndexError(f"token span [{offset}, {offset + length}) outside the arena of {self._size}")
        return self._buf[offset : offset + length]

    def spans(self, offsets: torch.Tensor, lengths: torch.Tensor, pad: int = -1) -> torch.Tensor:
        """Many spans at once: [M, max(lengths)] int64, each row padded with ``pad``."""
        offsets = offsets.reshape(-1).long()
        lengths = lengths.reshape(-1).long()
        width = int(lengths.max()) if lengths.numel() else 0
        cols = torch.arange(width)
        idx = (offsets[:, None] + cols[None, :]).clamp(0, max(self._size - 1, 0))
        out = self._buf[:max(self._size, 1)][idx] if self._size else torch.full(idx.shape, pad)
        return torch.where(cols[None, :] < lengths[:, None], out, torch.full_like(out, pad))

    def node_tokens(self, tree, b: int, n: int) -> torch.Tensor:
        """The step tokens of node n of tree b."""
        return self.get(int(tree.token_offset[b, n]), int(tree.token_length[b, n]))

    def path_tokens(self, tree, b: int, n: int) -> torch.Tensor:
        """Prompt + every step from the root down to node n (inclusive), concatenated."""
        path = tree.path_to_root(b, n)[::-1]
        return torch.cat([self.node_tokens(tree, b, m) for m in path])

    @property
    def nbytes(self) -> int:
        return self._size * 8
