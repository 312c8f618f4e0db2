"""Reward models that score steps incrementally on the search tree (issue 3 §5).

One concept per module:

- :mod:`.prefix_cache`     — left-padded prefix caches over KV segments; base-model forward
                             returning hidden states (no LM-head logits).
- :mod:`.step_tokens`      — a node's PRM tokens: the policy's arena, or re-tokenized text when the
                             tokenizers differ.
- :mod:`.incremental`      — :class:`IncrementalPRM`: per-node PRM KV store (byte budget, LRU,
                             transparent recompute), one batched forward per ``score`` call.
- :mod:`.head_op`          — the fused PRM head op (C candidate rows), torch fallback.
- :mod:`.prm_token`        — ``prm_token`` (Math-Shepherd good/bad token logits).
- :mod:`.classifier_heads` — ``prm_head`` (two-class head) and ``value_head`` (sigmoid head).
- :mod:`.loading`          — loading reward models offline; the embedded default's path.
- :mod:`.factories`        — the registry factories behind ``reward=<name>``.
- :mod:`.outcome`          — ``orm``: a head read only at the end of finished solutions.
- :mod:`.verifier`         — ``verifier``: reference grading (Examples only; refused in search).
- :mod:`.prompted`         — a prompted causal LM: batched greedy generation, two-token logits.
- :mod:`.judge`            — ``judge``: LLM verdict per step, parsed robustly.
- :mod:`.pairwise`         — ``pairwise``: A/B preference judge and Enhanced Borda Count.
- :mod:`.family_factories` — the factories behind ``reward=orm | verifier | judge | pairwise``.
"""

from lrm_engine.rewards.classifier_heads import TwoClassPRM, ValueHeadPRM
from lrm_engine.rewards.incremental import IncrementalPRM, RewardError
from lrm_engine.rewards.prm_token import TokenPRM, prm_token_defaults

__all__ = ["IncrementalPRM", "RewardError", "TokenPRM", "TwoClassPRM", "ValueHeadPRM",
           "prm_token_defaults"]
