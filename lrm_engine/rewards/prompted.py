"""A prompted causal LM for the `judge` and `pairwise` rewards: batched greedy generation and
the last-position logits of a few candidate tokens.

Loaded like policies (:func:`lrm_engine.models.loading.load_causal_lm`: a local directory,
safetensors or GGUF, offline). Every call is one batch over all prompts (left-padded), with no
cache shared across calls: a judge reads a whole rendered prompt (question, solution, question
to the judge), which is different text for every node, so there is no common prefix KV to keep
beyond the question (documented cost: ``counters.tokens_computed`` counts every prompt token).
"""

from __future__ import annotations

from typing import Sequence

import torch

from lrm_engine.models.counters import ComputeCounters
from lrm_engine.models.kv_layout import cache_kwarg, output_cache


class PromptedLM:
    """(model, tokenizer) wrapper: ``generate(prompts)`` and ``choice_logits(prompts, ids)``."""

    def __init__(self, model, tokenizer, *, max_prompt_tokens: int = 2048):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_prompt_tokens = int(max_prompt_tokens)
        self.device = next(model.parameters()).device
        pad = tokenizer.pad_token_id
        if pad is None:
            pad = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
        self.pad_id = int(pad)
        eos = tokenizer.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, (list, tuple)) else ([] if eos is None else [eos]))
        self.counters = ComputeCounters()
        # transformers API differences (5.x: ``cache=``, 4.x: ``past_key_values=``).
        self._cache_kw = cache_kwarg(model.forward)

    def _batch(self, prompts: Sequence[str]):
        ids = []
        for p in prompts:
            t = self.tokenizer(p, add_special_tokens=True)["input_ids"]
            # Keep the end of an over-long prompt (the question to the judge is at the end).
            ids.append(list(t)[-self.max_prompt_tokens:] or [self.pad_id])
        L = max(len(t) for t in ids)
        inp = torch.full((len(ids), L), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(ids), L), dtype=torch.long)
        for r, t in enumerate(ids):
            inp[r, L - len(t):] = torch.tensor(t, dtype=torch.long)
            mask[r, L - len(t):] = 1
        self.counters.tokens_computed += sum(len(t) for t in ids)
        return inp.to(self.device), mask.to(self.device)

    @torch.inference_mode()
    def choice_logits(self, prompts: Sequence[str], token_ids: Sequence[int]) -> torch.Tensor:
        """[P, C] float32 logits of ``token_ids`` at the position after each prompt (one forward)."""
        if not prompts:
            return torch.empty((0, len(token_ids)))
        inp, mask = self._batch(prompts)
        pos = (mask.cumsum(-1) - 1).clamp_min(0)
        out = self.model(input_ids=inp, attention_mask=mask, position_ids=pos, use_cache=False)
        self.counters.forward_calls += 1
        last = out.logits[:, -1, :].float()
        return last[:, torch.tensor(list(token_ids), device=last.device)].cpu()

    @torch.inference_mode()
    def generate(self, prompts: Sequence[str], max_new_tokens: int = 8) -> list[str]:
        """Greedy continuations (decoded, special tokens skipped), stopping at EOS or the limit."""
        if not prompts:
            return []
        inp, mask = self._batch(prompts)
        P = inp.shape[0]
        out_ids: list[list[int]] = [[] for _ in range(P)]
        done = torch.zeros(P, dtype=torch.bool)
        from transformers import DynamicCache

        cache = DynamicCache()
        x, m = inp, mask
        pos = (mask.cumsum(-1) - 1).clamp_min(0)
        for _ in range(max(1, int(max_new_tokens))):
            out = self.model(input_ids=x, attention_mask=m, position_ids=pos, use_cache=True,
                             **{self._cache_kw: cache})
            self.counters.forward_calls += 1
            cache = output_cache(out)
            nxt = out.logits[:, -1, :].argmax(-1).cpu()
            for r in range(P):
                if not done[r]:
                    t = int(nxt[r])
                    if t in self.eos_ids:
                        done[r] = True
                    else:
                        out_ids[r].append(t)
            self.counters.tokens_computed += int((~done).sum())
            if bool(done.all()):
                break
            x = nxt.view(P, 1).to(self.device)
            m = torch.cat([m, torch.ones((P, 1), dtype=m.dtype, device=m.device)], dim=1)
            pos = pos[:, -1:] + 1
        return [self.tokenizer.decode(t, skip_special_tokens=True) for t in out_ids]


def single_token(tokenizer, text: str, what: str) -> int:
    """The id of ``text`` as one token (a leading-space variant is tried second)."""
    for variant in (text, " " + text):
        ids = tokenizer(variant, add_special_tokens=False)["input_ids"]
        if len(ids) == 1:
            return int(ids[0])
    raise ValueError(f"{what} {text!r} is not a single token of the model's tokenizer")
