"""Left-padded prefix caches over per-node KV segments: the one layout the ``hf`` policy
(:class:`lrm_engine.models.hf_policy.HFPolicy`) and the incremental reward models
(:class:`lrm_engine.rewards.prefix_cache.DecoderRunner`) run a transformers decoder with.

The prefix of a row is the concatenation of its ancestors'
:class:`~lrm_engine.models.kv_store.KVSegment` s, laid out right-aligned (left-padded with zeros)
in a transformers ``DynamicCache`` (:func:`build_prefix_cache`); an attention mask hides the pads
(:func:`left_mask`) and explicit position ids continue each row's own prefix. New tokens are
right-padded after it (:func:`layout_rows`). After the forward pass, a new token run's keys and
values are cut out of the returned cache as a segment (:func:`cache_segment`).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Sequence

import torch

from lrm_engine.models.kv_store import KVSegment


def cache_kwarg(forward) -> str:
    """The cache keyword of a transformers ``forward`` (5.x: ``cache=``, 4.x:
    ``past_key_values=``)."""
    return "cache" if "cache" in inspect.signature(forward).parameters else "past_key_values"


def output_cache(out):
    """The cache a transformers forward returned (``cache`` in 5.x, ``past_key_values`` in 4.x)."""
    cache = getattr(out, "cache", None)
    return out.past_key_values if cache is None else cache


def check_dynamic_cache(cache, model, who: str, error: type[Exception] = RuntimeError) -> None:
    """Raise ``error`` unless ``cache`` is a full-attention ``DynamicCache`` (only that one can
    be split into per-node segments); ``who`` starts the message ("the hf policy")."""
    from transformers.cache_utils import DynamicLayer

    layers = getattr(cache, "layers", None)
    if not layers or not all(type(l) is DynamicLayer for l in layers):
        kinds = sorted({type(l).__name__ for l in layers or []}) or [type(cache).__name__]
        raise error(
            f"{who} needs a full-attention transformers DynamicCache; "
            f"{type(model).__name__} uses {', '.join(kinds)} (sliding-window, hybrid or "
            f"recurrent caches cannot be split into per-node segments)"
        )


def build_prefix_cache(prefixes: Sequence[Sequence[KVSegment]], plen: Sequence[int], lmax: int,
                       device):
    """A DynamicCache [R, H, lmax, D] per layer, each row's prefix right-aligned (left pads = 0)."""
    from transformers import DynamicCache

    if lmax == 0:
        return DynamicCache()
    ref = next(s for pre in prefixes for s in pre if s.length > 0)
    R = len(prefixes)
    data = []
    for l in range(len(ref.keys)):
        k = torch.zeros(R, ref.keys[l].shape[0], lmax, ref.keys[l].shape[-1],
                        dtype=ref.keys[l].dtype, device=device)
        v = torch.zeros(R, ref.values[l].shape[0], lmax, ref.values[l].shape[-1],
                        dtype=ref.values[l].dtype, device=device)
        for r, pre in enumerate(prefixes):
            o = lmax - plen[r]
            for s in pre:
                n = s.length
                k[r, :, o : o + n] = s.keys[l]
                v[r, :, o : o + n] = s.values[l]
                o += n
        data.append((k, v))
    return DynamicCache(ddp_cache_data=data)


def left_mask(plen: Sequence[int], lmax: int) -> torch.Tensor:
    """[R, lmax] attention mask of the left-padded prefixes (1 on each row's last plen[r])."""
    m = torch.zeros(len(plen), lmax, dtype=torch.long)
    for r, p in enumerate(plen):
        if p:
            m[r, lmax - p :] = 1
    return m


@dataclass
class RowLayout:
    """New token runs laid out after their left-padded prefixes (see :func:`layout_rows`)."""

    plen: list[int]  # prefix length of each row
    lmax: int  # the longest prefix (the cache width)
    lengths: list[int]  # new tokens of each row
    ids: torch.Tensor  # [R, smax] new tokens, right-padded
    mask: torch.Tensor  # [R, lmax + smax] attention mask over prefix + new tokens
    pos: torch.Tensor  # [R, smax] position ids continuing each row's prefix


def layout_rows(items, pad_token_id: int) -> RowLayout:
    """Lay out ``items`` — per row ``(prefix segments, new tokens [S] int64, split lengths
    summing to S)`` — for one batched forward pass on top of the prefixes' cache."""
    plen = [sum(s.length for s in pre) for pre, _, _ in items]
    lmax = max(plen)
    S = [int(t.numel()) for _, t, _ in items]
    smax = max(S)
    R = len(items)
    ids = torch.full((R, smax), pad_token_id, dtype=torch.long)
    mask = torch.cat([left_mask(plen, lmax), torch.zeros(R, smax, dtype=torch.long)], 1)
    for r, (_, t, splits) in enumerate(items):
        if sum(splits) != S[r]:
            raise ValueError("split lengths must sum to the token count")
        ids[r, : S[r]] = t
        mask[r, lmax : lmax + S[r]] = 1
    pos = torch.tensor(plen)[:, None] + torch.arange(smax)[None, :]
    return RowLayout(plen, lmax, S, ids, mask, pos)


def cache_segment(cache, row: int, start: int, n: int, next_logits=None) -> KVSegment:
    """Row ``row``'s keys and values at cache positions ``[start, start + n)`` as a segment."""
    ks = [l.keys[row, :, start : start + n].clone() for l in cache.layers]
    vs = [l.values[row, :, start : start + n].clone() for l in cache.layers]
    return KVSegment(ks, vs, None if next_logits is None else next_logits.clone())
