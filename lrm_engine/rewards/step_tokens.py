"""Where a reward model's step tokens come from: the policy's token arena, or re-tokenized text.

The PRM usually shares the policy's tokenizer (the embedded default trains both with the same
character tokenizer): then a node's PRM tokens are exactly its arena tokens
(``policy.arena(tree)``, ``tree.token_offset / token_length``) and nothing is decoded.

If the tokenizers differ (checked once per policy tokenizer: same vocabulary, same special-token
ids), each node's tokens are decoded to text with the policy's tokenizer and re-encoded with the
PRM's — the slower path. The root (the prompt) is re-encoded with the PRM's special tokens
(e.g. BOS), every step without them. Caveat of that path: the PRM sees the concatenation of
per-step encodings, which can differ from encoding the whole text at once where a token would
straddle a step boundary (never for delimiter-ended steps with BPE vocabularies that split on
newlines).
"""

from __future__ import annotations

import torch


def same_tokenizer(a, b) -> bool:
    """Whether two tokenizers map text to the same ids (vocabulary and special ids equal)."""
    if a is b:
        return True
    if a is None or b is None:
        return False
    try:
        if a.get_vocab() != b.get_vocab():
            return False
    except (AttributeError, NotImplementedError):
        return False
    for attr in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id"):
        if getattr(a, attr, None) != getattr(b, attr, None):
            return False
    return True


class StepTokenSource:
    """PRM token ids of tree nodes, read from the policy's arena or re-tokenized."""

    def __init__(self, prm_tokenizer, policy_tokenizer=None):
        self.tokenizer = prm_tokenizer
        self._verdict: dict[int, bool] = {}
        if policy_tokenizer is not None:
            self.shares(policy_tokenizer)

    def shares(self, policy_tokenizer) -> bool:
        """True when the policy's ids can be used as they are (checked once per tokenizer)."""
        key = id(policy_tokenizer)
        if key not in self._verdict:
            self._verdict[key] = same_tokenizer(self.tokenizer, policy_tokenizer)
        return self._verdict[key]

    def node_tokens(self, tree, b: int, n: int, policy) -> torch.Tensor:
        """The node's own tokens in the PRM's vocabulary (root: the prompt), int64."""
        ids = policy.arena(tree).node_tokens(tree, b, n)
        ptok = getattr(policy, "tokenizer", None)
        if ptok is None or self.shares(ptok):
            return ids.clone()
        text = ptok.decode(ids.tolist(), skip_special_tokens=True)
        root = n == tree.ROOT
        out = self.tokenizer(text, add_special_tokens=root)["input_ids"]
        return torch.tensor(out, dtype=torch.int64)
