"""Left-padded prefix caches over per-node KV segments, for encoder-only use of a decoder.

The same approach as :class:`lrm_engine.models.hf_policy.HFPolicy` (factored here so reward
models do not depend on the policy's private methods): the prefix of a row is the concatenation
of its ancestors' :class:`~lrm_engine.models.kv_store.KVSegment` s, laid out right-aligned
(left-padded with zeros) in a transformers ``DynamicCache``; an attention mask hides the pads
and explicit position ids continue each row's own prefix. New tokens are right-padded after it.

Unlike the policy, a reward model needs the *hidden states* of the new tokens, never the
language-model logits: :func:`encode` runs the model's base (decoder without its head) and
returns the last hidden state ``[R, S, d]`` (after the final norm), plus the new segments.
"""

from __future__ import annotations

import inspect
import itertools
from typing import Sequence

import torch

from lrm_engine.models.kv_store import KVSegment


class DecoderRunner:
    """Runs a transformers decoder's base model on top of stored KV segments.

    ``model``: a ``*ForCausalLM`` / ``*ForTokenClassification`` (anything whose ``base_model``
    is the decoder stack returning ``last_hidden_state`` and a ``DynamicCache``).
    """

    def __init__(self, model, pad_token_id: int = 0):
        self.model = model.eval()
        self.base = model.base_model
        self.device = next(model.parameters()).device
        self.pad_token_id = int(pad_token_id)
        params = inspect.signature(self.base.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"
        self._checked = False

    # ------------------------------------------------------------ cache layout
    def build_cache(self, prefixes: Sequence[Sequence[KVSegment]], plen: Sequence[int], lmax: int):
        """A DynamicCache [R, H, lmax, D] per layer, each row's prefix right-aligned (pads = 0)."""
        from transformers import DynamicCache

        if lmax == 0:
            return DynamicCache()
        ref = next(s for pre in prefixes for s in pre if s.length > 0)
        R = len(prefixes)
        data = []
        for l in range(len(ref.keys)):
            k = torch.zeros(R, ref.keys[l].shape[0], lmax, ref.keys[l].shape[-1],
                            dtype=ref.keys[l].dtype, device=self.device)
            v = torch.zeros(R, ref.values[l].shape[0], lmax, ref.values[l].shape[-1],
                            dtype=ref.values[l].dtype, device=self.device)
            for r, pre in enumerate(prefixes):
                o = lmax - plen[r]
                for s in pre:
                    n = s.length
                    k[r, :, o : o + n] = s.keys[l]
                    v[r, :, o : o + n] = s.values[l]
                    o += n
            data.append((k, v))
        return DynamicCache(ddp_cache_data=data)

    @staticmethod
    def left_mask(plen: Sequence[int], lmax: int) -> torch.Tensor:
        m = torch.zeros(len(plen), lmax, dtype=torch.long)
        for r, p in enumerate(plen):
            if p:
                m[r, lmax - p :] = 1
        return m

    # ------------------------------------------------------------ forward
    def encode(self, items):
        """Encode token runs on top of stored prefixes, one batched forward pass.

        items: per row ``(prefix segments, new tokens [S] int64, split lengths summing to S)``.
        Returns ``(hidden [R, smax, d] float32, segments)`` where ``segments[r]`` holds one new
        KVSegment per split (no next-token logits) and ``hidden[r, :S_r]`` are the new tokens'
        last hidden states.
        """
        from transformers import DynamicCache

        plen = [sum(s.length for s in pre) for pre, _, _ in items]
        lmax = max(plen)
        S = [int(t.numel()) for _, t, _ in items]
        smax = max(S)
        R = len(items)
        cache = self.build_cache([pre for pre, _, _ in items], plen, lmax)
        ids = torch.full((R, smax), self.pad_token_id, dtype=torch.long)
        mask = torch.cat([self.left_mask(plen, lmax), torch.zeros(R, smax, dtype=torch.long)], 1)
        for r, (_, t, splits) in enumerate(items):
            if sum(splits) != S[r]:
                raise ValueError("split lengths must sum to the token count")
            ids[r, : S[r]] = t
            mask[r, lmax : lmax + S[r]] = 1
        pos = torch.tensor(plen)[:, None] + torch.arange(smax)[None, :]
        kw = dict(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                  position_ids=pos.to(self.device), use_cache=True)
        kw[self._cache_kw] = cache if lmax else DynamicCache()
        with torch.inference_mode():
            out = self.base(**kw)
        new_cache = getattr(out, "cache", None)
        if new_cache is None:
            new_cache = out.past_key_values
        if not self._checked:
            self._check_cache(new_cache)
        segs = []
        for r, (_, _, splits) in enumerate(items):
            row, o = [], 0
            for n in splits:
                ks = [l.keys[r, :, lmax + o : lmax + o + n].clone() for l in new_cache.layers]
                vs = [l.values[r, :, lmax + o : lmax + o + n].clone() for l in new_cache.layers]
                row.append(KVSegment(ks, vs, None))
                o += n
            segs.append(row)
        return out.last_hidden_state, segs

    def _check_cache(self, cache) -> None:
        from transformers.cache_utils import DynamicLayer

        layers = getattr(cache, "layers", None)
        if not layers or not all(type(l) is DynamicLayer for l in layers):
            kinds = sorted({type(l).__name__ for l in layers or []}) or [type(cache).__name__]
            raise RuntimeError(
                f"incremental PRM scoring needs a full-attention transformers DynamicCache; "
                f"{type(self.model).__name__} uses {', '.join(kinds)} (sliding-window, hybrid or "
                f"recurrent caches cannot be split into per-node segments)"
            )
        self._checked = True

    @staticmethod
    def split_ends(splits: Sequence[int]) -> list[int]:
        return list(itertools.accumulate(splits))
