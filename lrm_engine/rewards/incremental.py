"""IncrementalPRM: process reward models that run only the new step's tokens, on cached prefix KV.

``score(tree, pairs [P, 2] (b, n), policy) -> [P] float32`` (the ``RewardModel`` protocol, as
``SearchContext.expand`` calls it after every policy call):

1. Parents. The PRM prefix of a node's parent is the concatenation of the PRM KV segments of
   the path root..parent, kept in this model's own :class:`~lrm_engine.models.kv_store.KVStore`
   (bounded by ``kv_budget_mb``, LRU, keyed ``(tree_key, b, node)`` like the policy's, separate
   from it). The segments on every parent path are pinned for the call. A path that is not fully
   resident (the root seen for the first time, or segments the LRU evicted) is encoded from its
   deepest resident prefix in one batched forward pass over the distinct parents, and the
   segments go back into the store — recomputation is transparent.
2. Steps. One batched forward pass over all P pairs: row p holds its parent's prefix
   (left-padded cache) and the node's own step tokens (+ the step tag, if the model uses one).
   Only those tokens are computed. The hidden state at the row's last token (the step tag, or
   the step's last token — the delimiter) goes through the head (:meth:`_head`); the fused PRM
   head op computes only the C candidate rows, never full-vocabulary logits.
3. The node's new segment is stored for its future children (terminal nodes are never expanded,
   so theirs is not kept). A node scored twice returns its cached score.

Step tag. The PRM sees ``<bos> prompt step_1 TAG step_2 TAG ...`` — the layout the ``prm``
objective trains on (``lrm_engine/train/prm_data.py``) — and reads each score at the last token of
the TAG after the step. ``step_tag=None`` (default) means the policy's step delimiter
(``policy.step.delimiter``), which delimiter-ended steps already end with, so nothing is added;
a step ended by EOS has the EOS dropped and the tag appended, one cut by ``max_step_tokens`` gets
the tag appended. An explicit tag (Math-Shepherd's ``"ки"``) is appended to every step that does
not already end with it; ``step_tag=""`` scores at each step's own last token.

Counters (``self.counters``, running totals; ``last_counters`` for the last call):
tokens_computed (roots, recomputed segments and new steps, tags included), tokens_reused
(parent-prefix tokens read from the store, counted once per scored pair — a re-encoding PRM
would encode them once per pair), tokens_recomputed, bytes_resident_peak, evictions,
forward_calls; ``last_counters.per_tree`` splits the last call's by tree (exact per-problem
counts).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import itertools
import weakref
from dataclasses import dataclass, field
from typing import Sequence

import torch

from lrm_engine.models.counters import ComputeCounters, TreeTally
from lrm_engine.models.kv_store import KVStore
from lrm_engine.rewards.prefix_cache import DecoderRunner
from lrm_engine.rewards.step_tokens import StepTokenSource


class RewardError(RuntimeError):
    """A reward call that cannot be carried out (unknown node, unscorable step, ...)."""


@dataclass
class _TreeState:
    key: int
    ref: weakref.ref
    arena_id: int
    # (b, n) -> score of nodes already scored.
    scores: dict = field(default_factory=dict)
    # (b, n) -> PRM tokens of the node's segment (step tokens + tag).
    tokens: dict = field(default_factory=dict)
    # (b, n) whose segment was computed at least once (a second time counts as recomputed).
    seen: set = field(default_factory=set)
    # (b, n) -> hidden state [d] at the segment's last token (read-outs that score a child's
    # first token need it; kept only when the reward asks, see IncrementalPRM.keeps_last_hidden).
    last_hidden: dict = field(default_factory=dict)


class IncrementalPRM(ABC):
    """Base of the incremental reward models (``prm_token``, ``prm_head``, ``value_head``)."""

    name = "prm"
    # Keep each segment's last hidden state (for read-outs that score a step's first token).
    keeps_last_hidden = False

    def __init__(
        self,
        model,
        tokenizer,
        *,
        kv_budget_mb: float = 256.0,
        step_tag: str | None = None,
        policy_tokenizer=None,
        backend: str = "auto",
    ):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.backend = backend
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.runner = DecoderRunner(model, pad)
        self.device = self.runner.device
        self.counters = ComputeCounters()
        self.last_counters = ComputeCounters()
        self.store = KVStore.from_mb(kv_budget_mb, self.counters)
        self.tokens = StepTokenSource(tokenizer, policy_tokenizer)
        # None: the policy's step delimiter (resolved at the first call); "": no tag.
        self.step_tag = step_tag
        self.tag_ids: list[int] | None = None if step_tag is None else self._encode_tag(step_tag)
        eos = tokenizer.eos_token_id
        self._eos = set(eos if isinstance(eos, (list, tuple)) else ([] if eos is None else [eos]))
        self._keys = itertools.count()
        self._trees: dict[int, _TreeState] = {}

    def _encode_tag(self, tag: str | None) -> list[int]:
        if not tag:
            return []
        ids = self.tokenizer(tag, add_special_tokens=False)["input_ids"]
        if not ids:
            raise ValueError(f"step_tag {tag!r} encodes to no token")
        return list(ids)

    # ------------------------------------------------------------ the head (per kind)
    @abstractmethod
    def _head(self, hidden: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Scores [P] float32 in [0, 1] from hidden [T, d] at positions [P]."""

    def _span_scores(self, hidden: torch.Tensor, ids: torch.Tensor,
                     spans: Sequence[tuple[int, int]], before: torch.Tensor | None = None) -> torch.Tensor:
        """Scores [len(spans)] of steps whose segment tokens are ``ids[s:e]`` with hidden states
        ``hidden[s:e]`` (hidden [T, d], ids [T] int64); ``before [len(spans), d]`` (when the
        reward keeps them) holds the hidden state of the token just before each span, else
        ``hidden[s - 1]`` is that token's. Default: the head at each span's last token (the step
        tag); a reward that reads more of the step overrides this."""
        positions = torch.tensor([e - 1 for _, e in spans], dtype=torch.long, device=hidden.device)
        return self._head(hidden, positions)

    # ------------------------------------------------------------ trees
    def _state(self, tree, policy) -> _TreeState:
        arena = policy.arena(tree)
        st = self._trees.get(id(tree))
        if st is not None and st.ref() is tree and st.arena_id == id(arena):
            return st
        # New tree, or the policy restarted it (init_roots makes a new arena): start over.
        self.release(tree)
        key = next(self._keys)
        st = _TreeState(key, weakref.ref(tree), id(arena))
        self._trees[id(tree)] = st
        weakref.finalize(tree, self._forget_key, id(tree), key)
        return st

    def _forget_key(self, tid: int, key: int) -> None:
        st = self._trees.get(tid)
        if st is not None and st.key == key:
            del self._trees[tid]
        self.store.discard_where(lambda k: k[0] == key)

    def release(self, tree) -> None:
        """Forget a tree: its cached scores and PRM KV segments."""
        st = self._trees.pop(id(tree), None)
        if st is not None:
            self.store.discard_where(lambda k, key=st.key: k[0] == key)

    def _tag_ids(self, policy) -> list[int]:
        if self.tag_ids is None:
            step = getattr(policy, "step", None)
            self.tag_ids = self._encode_tag(step.delimiter if step is not None else "")
        return self.tag_ids

    def _segment_tokens(self, st: _TreeState, tree, b: int, n: int, policy) -> torch.Tensor:
        """The node's PRM segment: its step tokens, then the step tag unless they end with it
        (a step ended by EOS has the EOS dropped; one cut by length gets the tag appended)."""
        t = st.tokens.get((b, n))
        if t is None:
            t = self.tokens.node_tokens(tree, b, n, policy)
            tag = self._tag_ids(policy)
            if n != tree.ROOT:
                while t.numel() and int(t[-1]) in self._eos:
                    t = t[:-1]
                if tag and t[-len(tag):].tolist() != tag:
                    t = torch.cat([t, torch.tensor(tag, dtype=torch.int64)])
            if t.numel() == 0:
                raise RewardError(f"node {n} of tree {b} has no tokens to score")
            st.tokens[(b, n)] = t
        return t

    # ------------------------------------------------------------ scoring
    def score(self, tree, pairs, policy) -> torch.Tensor:
        """Step scores [P] float32 of the steps leading to nodes pairs [P, 2] (b, n)."""
        pairs_t = torch.as_tensor(pairs, dtype=torch.long).reshape(-1, 2)
        pl = [(int(b), int(n)) for b, n in pairs_t.tolist()]
        out = torch.full((len(pl),), float("nan"), dtype=torch.float32)
        if not pl:
            return out
        st = self._state(tree, policy)
        call = ComputeCounters(bytes_resident_peak=self.store.bytes_resident)
        self._tally = tally = TreeTally(tree.batch_size)
        before = ComputeCounters(**self.counters.as_dict())
        todo: list[int] = []
        for i, (b, n) in enumerate(pl):
            if not 0 < n < int(tree.num_nodes[b]):
                raise RewardError(f"node {n} of tree {b} is not a scorable step (root or unused slot)")
            s = st.scores.get((b, n))
            if s is None:
                todo.append(i)
            else:
                out[i] = s
        # Distinct (pair) rows to compute: duplicates in one call share one row.
        rows: list[tuple[int, int]] = list(dict.fromkeys(pl[i] for i in todo))
        pinned: list = []
        try:
            if rows:
                parents = list(dict.fromkeys((b, int(tree.parent[b, n])) for b, n in rows))
                ppaths = {p: tree.path_to_root(p[0], p[1])[::-1] for p in parents}
                self._ensure_prefixes(st, tree, policy, parents, ppaths, pinned)
                scores = self._score_rows(st, tree, policy, rows, ppaths)
                for (b, n), s in zip(rows, scores.tolist()):
                    st.scores[(b, n)] = s
                for i in todo:
                    out[i] = st.scores[pl[i]]
        finally:
            self.store.unpin(pinned)
        after = self.counters.as_dict()
        for k, v in after.items():
            if k != "bytes_resident_peak":
                setattr(call, k, v - getattr(before, k))
        call.bytes_resident_peak = max(call.bytes_resident_peak, self.counters.bytes_resident_peak)
        call.per_tree = tally
        self.last_counters = call
        return out

    def _ensure_prefixes(self, st, tree, policy, parents, ppaths, pinned) -> None:
        """Pin the segments on every parent path; encode the parts that are not resident."""
        redo = []
        for (b, m) in parents:
            path = ppaths[(b, m)]
            keys = [(st.key, b, x) for x in path]
            j = self.store.pin_resident_prefix(keys, pinned) - 1
            if j < len(path) - 1:
                redo.append((b, path, keys, j))
        if not redo:
            return
        items = []
        for b, path, keys, j in redo:
            pre = [self.store.get(k) for k in keys[: j + 1]]
            toks = [self._segment_tokens(st, tree, b, x, policy) for x in path[j + 1 :]]
            items.append((pre, torch.cat(toks), [int(t.numel()) for t in toks]))
        hidden, segs = self.runner.encode(items)
        self.counters.forward_calls += 1
        self._tally.forward([b for b, _, _, _ in redo])
        for r, ((b, path, keys, j), (_, toks, splits), ss) in enumerate(zip(redo, items, segs)):
            self.counters.tokens_computed += int(toks.numel())
            self._tally.add("tokens_computed", [b], int(toks.numel()))
            end = 0
            for x, key, seg, n in zip(path[j + 1 :], keys[j + 1 :], ss, splits):
                end += n
                if (b, x) in st.seen:
                    self.counters.tokens_recomputed += n
                    self._tally.add("tokens_recomputed", [b], n)
                st.seen.add((b, x))
                self.store.put(key, seg, pin=True)
                pinned.append(key)
                if self.keeps_last_hidden:
                    st.last_hidden[(b, x)] = hidden[r, end - 1].detach().clone()

    def _score_rows(self, st, tree, policy, rows, ppaths) -> torch.Tensor:
        """One forward over all rows (node step tokens on the parent's prefix); store segments."""
        items, lens, parents = [], [], []
        for b, n in rows:
            parents.append((b, int(tree.parent[b, n])))
            path = ppaths[parents[-1]]
            pre = [self.store.get((st.key, b, x)) for x in path]
            if any(s is None for s in pre):  # pragma: no cover — pinned above
                raise RewardError("a pinned PRM prefix segment went missing")
            t = self._segment_tokens(st, tree, b, n, policy)
            items.append((pre, t, [int(t.numel())]))
            lens.append(int(t.numel()))
            self.counters.tokens_reused += sum(s.length for s in pre)
            self._tally.add("tokens_reused", [b], sum(s.length for s in pre))
        hidden, segs = self.runner.encode(items)
        self.counters.forward_calls += 1
        self.counters.tokens_computed += sum(lens)
        rows_b = [b for b, _ in rows]
        self._tally.forward(rows_b)
        self._tally.add("tokens_computed", rows_b, lens)
        R, smax, d = hidden.shape
        ids = torch.nn.utils.rnn.pad_sequence([t for _, t, _ in items], batch_first=True)
        ids = torch.nn.functional.pad(ids, (0, smax - ids.shape[1])).reshape(-1)  # row-major, like hidden
        spans = [(r * smax, r * smax + L) for r, L in enumerate(lens)]
        # every computed segment keeps its last hidden state, so a parent's is always there
        before = torch.stack([st.last_hidden[p] for p in parents]) if self.keeps_last_hidden else None
        scores = self._span_scores(hidden.reshape(R * smax, d), ids.to(hidden.device), spans,
                                   before).float().cpu()
        for r, ((b, n), ss) in enumerate(zip(rows, segs)):
            if (b, n) in st.seen:
                self.counters.tokens_recomputed += ss[0].length
                self._tally.add("tokens_recomputed", [b], ss[0].length)
            st.seen.add((b, n))
            if not bool(tree.terminal[b, n]):
                self.store.put((st.key, b, n), ss[0])
                if self.keeps_last_hidden:
                    st.last_hidden[(b, n)] = hidden[r, lens[r] - 1].detach().clone()
        return scores

    # ------------------------------------------------------------ reference (tests, baselines)
    def path_segments(self, tree, b: int, n: int, policy) -> list[torch.Tensor]:
        """The PRM tokens of every node root..n (each step's followed by the tag)."""
        st = self._state(tree, policy)
        return [self._segment_tokens(st, tree, b, x, policy) for x in tree.path_to_root(b, n)[::-1]]

    def score_full(self, token_runs: Sequence[Sequence[torch.Tensor]]) -> list[torch.Tensor]:
        """Score whole paths from scratch (no cache): for each path (list of per-node token
        tensors, root first) the scores [len - 1] of its steps, from one full forward pass.

        The re-encoding baseline: what PRMs without a prefix cache compute.
        """
        out = []
        for segs in token_runs:
            ids = torch.cat(list(segs))[None].to(self.device)
            with torch.inference_mode():
                h = self.model.base_model(input_ids=ids, use_cache=False).last_hidden_state[0]
            ends = list(itertools.accumulate(int(s.numel()) for s in segs))
            spans = list(zip(ends[:-1], ends[1:]))
            out.append(self._span_scores(h, ids[0], spans).float().cpu())
        return out
