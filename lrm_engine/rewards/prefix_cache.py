"""Left-padded prefix caches over per-node KV segments, for encoder-only use of a decoder.

The same layout as :class:`lrm_engine.models.hf_policy.HFPolicy` — both use
:mod:`lrm_engine.models.kv_layout`, so reward models do not depend on the policy's private
methods: the prefix of a row is the concatenation of its ancestors'
:class:`~lrm_engine.models.kv_store.KVSegment` s, laid out right-aligned (left-padded with zeros)
in a transformers ``DynamicCache``; an attention mask hides the pads and explicit position ids
continue each row's own prefix. New tokens are right-padded after it.

Unlike the policy, a reward model needs the *hidden states* of the new tokens, never the
language-model logits: :func:`encode` runs the model's base (decoder without its head) and
returns the last hidden state ``[R, S, d]`` (after the final norm), plus the new segments.
"""

from __future__ import annotations

import itertools
from typing import Sequence

import torch

from lrm_engine.models.kv_layout import (build_prefix_cache, cache_kwarg, cache_segment,
                                         check_dynamic_cache, layout_rows, left_mask, output_cache)
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
        self._cache_kw = cache_kwarg(self.base.forward)
        self._checked = False

    # ------------------------------------------------------------ cache layout
    def build_cache(self, prefixes: Sequence[Sequence[KVSegment]], plen: Sequence[int], lmax: int):
        """A DynamicCache [R, H, lmax, D] per layer, each row's prefix right-aligned (pads = 0)."""
        return build_prefix_cache(prefixes, plen, lmax, self.device)

    left_mask = staticmethod(left_mask)

    # ------------------------------------------------------------ forward
    def encode(self, items):
        """Encode token runs on top of stored prefixes, one batched forward pass.

        items: per row ``(prefix segments, new tokens [S] int64, split lengths summing to S)``.
        Returns ``(hidden [R, smax, d] float32, segments)`` where ``segments[r]`` holds one new
        KVSegment per split (no next-token logits) and ``hidden[r, :S_r]`` are the new tokens'
        last hidden states.
        """
        lay = layout_rows(items, self.pad_token_id)
        lmax = lay.lmax
        cache = self.build_cache([pre for pre, _, _ in items], lay.plen, lmax)
        kw = dict(input_ids=lay.ids.to(self.device), attention_mask=lay.mask.to(self.device),
                  position_ids=lay.pos.to(self.device), use_cache=True)
        kw[self._cache_kw] = cache
        with torch.inference_mode():
            out = self.base(**kw)
        new_cache = output_cache(out)
        if not self._checked:
            check_dynamic_cache(new_cache, self.model, "incremental PRM scoring")
            self._checked = True
        segs = []
        for r, (_, _, splits) in enumerate(items):
            row, o = [], 0
            for n in splits:
                row.append(cache_segment(new_cache, r, lmax + o, n))
                o += n
            segs.append(row)
        return out.last_hidden_state, segs

    @staticmethod
    def split_ends(splits: Sequence[int]) -> list[int]:
        return list(itertools.accumulate(splits))
