"""HFPolicy: batched step expansion over a plain transformers causal LM, on the tree's KV store.

The ``hf`` policy plugin's implementation. It works for any decoder whose transformers cache is a
full-attention ``DynamicCache`` (Llama, Qwen2, Mistral without a sliding window, Phi, GPT-NeoX,
...). The engine-native ``tree`` policy (tree attention over segments, no cache copying) is a
separate implementation with the same interface; see docs/models.md.

How one ``expand(tree, nodes, k, sampling)`` call runs:

1. Prefixes. The prefix of node n is the concatenation of the KV segments of the path root..n
   (each node's segment holds only its own step tokens). Resident segments are pinned for the
   call; if a segment on a path was evicted, the path is re-encoded from its deepest fully
   resident prefix (or from the root) in one batched forward pass, and the recomputed segments
   go back into the store.
2. Slots. The k children of every node are allocated with ``lrm_engine.ops.expand``
   (leaf_node = the node, leaf_action = 0..k-1).
3. Decode. One batch of P*k rows (P nodes, k children each): each node's prefix is laid out
   left-padded in a ``DynamicCache`` (built once per node, repeated for its k rows — the "cache
   copying" of the hf policy), with an attention mask and explicit position ids. The first token
   of every child is sampled from the node's stored next-token logits (no forward pass). Rows
   leave the batch as they end: at EOS or a final-answer step (terminal: not fed back, no
   segment), or at the step delimiter / ``max_step_tokens`` (the last token is fed once more so
   the child's segment and its next-token logits are complete, then stored).
4. Tree. Terminal flags, token spans (into the tree's token arena) and the node's action priors
   are written: ``children_prior[b, n, :k]`` = softmax of the children's sum-logprobs
   (``prior="softmax"``) or 1/k (``prior="uniform"``); actions k..A-1 are marked invalid
   (``BatchedTree.INVALID_PRIOR``): a node is expanded once, with all its children.

Sum of logprobs: under the model's own distribution (log-softmax of the raw logits,
temperature 1), whatever the sampling warpers.

Sampling is counter-based (lrm_engine/core/rng.py): a child's key is derived from its parent's
key and its action, and its t-th token is drawn from ``uniform(mix(key ^ seed, t))``, so a
problem's samples do not depend on the other problems of the batch, the batch size or a resume.

Stopping guards: a child whose path reaches the model's context (``max_position_embeddings``)
ends there (counter ``context_stops``), and a step whose text is empty apart from the delimiter
ends its path (``empty_steps``): both are terminal, so no search can loop on them.

Counters: every call's PER_TREE counts are also split by tree (``call.per_tree``), so that each
problem's counts are exact whatever shares its batch.
"""

from __future__ import annotations

import inspect
import itertools
import weakref
from dataclasses import dataclass, field
from typing import Sequence

import torch

from lrm_engine.core.interfaces import StepConvention
from lrm_engine.core.rng import child_key, mix
from lrm_engine.core.tree import BatchedTree
from lrm_engine.models.counters import ComputeCounters, TreeTally
from lrm_engine.models.kv_layout import (build_prefix_cache, cache_kwarg, cache_segment,
                                         check_dynamic_cache, layout_rows, left_mask, output_cache)
from lrm_engine.models.kv_store import KVSegment, KVStore
from lrm_engine.models.sampling import SamplingConfig, sample
from lrm_engine.models.token_store import TokenArena


class PolicyError(RuntimeError):
    """A policy call that cannot be carried out (wrong nodes, tree not started, ...)."""


@dataclass
class ExpandResult:
    """What one ``expand`` call produced, node-major (P expanded nodes x k children)."""

    nodes: torch.Tensor  # [P, 2] int64 — (tree b, node slot n) of each expanded node
    children: torch.Tensor  # [P, k] int32 — the children's slots in tree b
    tokens: list[list[torch.Tensor]]  # P x k int64 step tokens
    logprob_sum: torch.Tensor  # [P, k] float32
    length: torch.Tensor  # [P, k] int32
    finished: torch.Tensor  # [P, k] bool — EOS or a final-answer step (the child is terminal)
    counters: ComputeCounters = field(default_factory=ComputeCounters)
    # [B, M, k] int32 children per (tree, given node), -1 where none: set when nodes was [B, M].
    children_bt: torch.Tensor | None = None


@dataclass
class _TreeState:
    key: int
    arena: TokenArena
    ref: weakref.ref


class HFPolicy:
    """Policy over a transformers causal LM with a byte-bounded per-node KV store."""

    name = "hf"

    def __init__(
        self,
        model,
        tokenizer,
        *,
        step: StepConvention | None = None,
        kv_budget_mb: float = 512.0,
        max_step_tokens: int = 64,
        stop_token_ids: Sequence[int] | None = None,
        eos_token_ids: Sequence[int] | None = None,
        prior: str = "softmax",
        backend="auto",
    ):
        if prior not in ("softmax", "uniform"):
            raise ValueError(f"prior must be 'softmax' or 'uniform', got {prior!r}")
        if max_step_tokens < 1:
            raise ValueError("max_step_tokens must be >= 1")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.step = step
        self.max_step_tokens = int(max_step_tokens)
        self.prior = prior
        self.backend = backend
        self.device = next(model.parameters()).device
        self.counters = ComputeCounters()  # running totals over every call
        self.store = KVStore.from_mb(kv_budget_mb, self.counters)
        # Longest path (prompt + steps) the model can attend over; None = unknown.
        ctx_len = getattr(getattr(model, "config", None), "max_position_embeddings", None)
        self.context_length = int(ctx_len) if ctx_len else None
        self._keys = itertools.count()
        self._trees: dict[int, _TreeState] = {}
        # Stop conditions.
        eos = set(eos_token_ids) if eos_token_ids is not None else self._default_eos()
        self.eos_token_ids = sorted(eos)
        self.stop_token_ids = sorted(set(stop_token_ids)) if stop_token_ids is not None else None
        self._vocab = int(model.get_output_embeddings().weight.shape[0])
        self._eos_mask = self._mask(self.eos_token_ids)
        self._delim_mask = None if self.stop_token_ids is None else self._mask(self.stop_token_ids)
        # transformers API differences (5.x: ``cache=``, 4.x: ``past_key_values=``).
        self._cache_kw = cache_kwarg(model.forward)
        self._logits_to_keep = "logits_to_keep" in inspect.signature(model.forward).parameters
        self._checked_cache = False

    # ------------------------------------------------------------ construction
    @classmethod
    def from_config(
        cls,
        model_path,
        gguf_file: str | None = None,
        dtype="float32",
        kv_budget_mb: float = 512.0,
        max_step_tokens: int = 64,
        trust_remote_code: bool = False,
        device="cpu",
        step: StepConvention | None = None,
        step_delimiter: str | None = None,
        **kw,
    ) -> "HFPolicy":
        """Load a local model (see ``load_causal_lm``) and wrap it.

        step / step_delimiter: the task's StepConvention (or just its delimiter string).
        Other keywords (stop_token_ids, eos_token_ids, prior, backend) go to the constructor.
        """
        from lrm_engine.models.loading import load_causal_lm

        model, tok = load_causal_lm(
            model_path, gguf_file=gguf_file, dtype=dtype, trust_remote_code=trust_remote_code, device=device
        )
        if step is None and step_delimiter is not None:
            step = StepConvention(delimiter=step_delimiter)
        return cls(model, tok, step=step, kv_budget_mb=kv_budget_mb, max_step_tokens=max_step_tokens, **kw)

    def _default_eos(self) -> set[int]:
        ids: set[int] = set()
        for src in (self.tokenizer.eos_token_id, getattr(self.model.generation_config, "eos_token_id", None)):
            if src is None:
                continue
            ids.update(src if isinstance(src, (list, tuple)) else [src])
        return ids

    def _mask(self, ids) -> torch.Tensor:
        m = torch.zeros(self._vocab, dtype=torch.bool)
        for i in ids:
            if 0 <= i < self._vocab:
                m[i] = True
        return m

    def _delimiter_mask(self) -> torch.Tensor:
        """Tokens whose text contains the step delimiter (computed once from the vocabulary)."""
        if self._delim_mask is None:
            m = torch.zeros(self._vocab, dtype=torch.bool)
            if self.step is not None and self.step.delimiter:
                d = self.step.delimiter
                n = min(len(self.tokenizer), self._vocab)
                texts = self.tokenizer.batch_decode([[i] for i in range(n)])
                for i, t in enumerate(texts):
                    if d in t:
                        m[i] = True
            self._delim_mask = m
        return self._delim_mask

    # ------------------------------------------------------------ trees
    def _state(self, tree: BatchedTree) -> _TreeState:
        st = self._trees.get(id(tree))
        if st is None or st.ref() is not tree:
            raise PolicyError("this tree was not started by this policy: call policy.init_roots(tree, prompts) first")
        return st

    def arena(self, tree: BatchedTree) -> TokenArena:
        """The token arena that ``tree.token_offset`` / ``token_length`` point into."""
        return self._state(tree).arena

    def path_tokens(self, tree: BatchedTree, b: int, n: int) -> torch.Tensor:
        """Prompt + steps root..n, int64."""
        return self.arena(tree).path_tokens(tree, b, n)

    def text(self, tree: BatchedTree, b: int, n: int, with_prompt: bool = False) -> str:
        """The decoded steps root..n (the prompt excluded unless asked)."""
        ar = self.arena(tree)
        path = tree.path_to_root(b, n)[::-1]
        if not with_prompt:
            path = path[1:]
        ids = torch.cat([ar.node_tokens(tree, b, m) for m in path]) if path else torch.empty(0, dtype=torch.long)
        # Special tokens (EOS, pad, end-of-turn) are not part of the solution's text.
        return self.tokenizer.decode(ids.tolist(), skip_special_tokens=True)

    def release(self, tree: BatchedTree) -> None:
        """Forget a tree: drop its arena and its KV segments."""
        st = self._trees.pop(id(tree), None)
        if st is not None:
            self.store.discard_where(lambda k, key=st.key: k[0] == key)

    def init_roots(self, tree: BatchedTree, prompts, add_special_tokens: bool = True) -> ComputeCounters:
        """Start the B trees from B prompts (strings or token-id lists).

        The prompt's tokens become the root's step tokens; the root's KV segment (and its next-token
        logits) is computed once, batched over the prompts. Any earlier state of ``tree`` in this
        policy is dropped; the tree itself should be fresh (``BatchedTree.empty`` or ``reset()``).
        """
        if len(prompts) != tree.batch_size:
            raise PolicyError(f"{len(prompts)} prompts for a tree batch of {tree.batch_size}")
        self.release(tree)
        key = next(self._keys)
        st = _TreeState(key, TokenArena(), weakref.ref(tree))
        self._trees[id(tree)] = st
        weakref.finalize(tree, self._forget_key, id(tree), key)
        toks = []
        for b, p in enumerate(prompts):
            ids = self.tokenizer(p, add_special_tokens=add_special_tokens)["input_ids"] if isinstance(p, str) else list(p)
            if not ids:
                raise PolicyError(f"prompt {b} is empty")
            t = torch.tensor(ids, dtype=torch.int64)
            tree.token_offset[b, BatchedTree.ROOT] = st.arena.append(t)
            tree.token_length[b, BatchedTree.ROOT] = len(ids)
            toks.append(t)
        call = self._begin_call(tree)
        try:
            segs = self._prefill([([], t, [len(t)]) for t in toks], call, list(range(len(toks))))
            for b, s in enumerate(segs):
                self.store.put((key, b, BatchedTree.ROOT), s[0])
        finally:
            self._end_call(call)
        return call

    def _forget_key(self, tid: int, key: int) -> None:
        st = self._trees.get(tid)
        if st is not None and st.key == key:
            del self._trees[tid]
        self.store.discard_where(lambda k: k[0] == key)

    # ------------------------------------------------------------ counters
    def _begin_call(self, tree: BatchedTree) -> ComputeCounters:
        call = ComputeCounters(bytes_resident_peak=self.store.bytes_resident)
        call.per_tree = TreeTally(tree.batch_size)
        self.store.counters = call
        return call

    def _end_call(self, call: ComputeCounters) -> None:
        self.store.counters = self.counters
        self.counters.add_(call)

    # ------------------------------------------------------------ model plumbing
    def _forward(self, ids, mask, pos, cache, keep=None):
        """One forward pass; returns (logits [R, S', V] float32, cache)."""
        from transformers import DynamicCache

        if cache is None:
            cache = DynamicCache()
        kw = dict(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                  position_ids=pos.to(self.device), use_cache=True)
        kw[self._cache_kw] = cache
        if keep is not None and self._logits_to_keep:
            kw["logits_to_keep"] = keep.to(self.device)
        with torch.inference_mode():
            out = self.model(**kw)
        logits = out.logits.float()
        if keep is not None and not self._logits_to_keep:
            logits = logits[:, keep.to(self.device)]
        new_cache = output_cache(out)
        if not self._checked_cache:
            check_dynamic_cache(new_cache, self.model, "the hf policy", PolicyError)
            self._checked_cache = True
        return logits, new_cache

    def _build_cache(self, prefixes: list[list[KVSegment]], plen: list[int], lmax: int):
        """A DynamicCache [R, H, lmax, D] per layer, each row's prefix right-aligned (left pads = 0)."""
        return build_prefix_cache(prefixes, plen, lmax, self.device)

    def _prefill(self, items, call: ComputeCounters, trees: list[int]) -> list[list[KVSegment]]:
        """Encode token runs on top of stored prefixes, one batched forward pass.

        items: (prefix segments, new tokens [S] int64, split lengths summing to S) per row;
        trees: the tree (b) of each row, for the per-tree counters.
        Returns per row one KVSegment per split, each with its next-token logits.
        """
        if not items:
            return []
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        lay = layout_rows(items, pad)
        lmax = lay.lmax
        cache = self._build_cache([pre for pre, _, _ in items], lay.plen, lmax)
        ends = [list(itertools.accumulate(splits)) for _, _, splits in items]
        keep = torch.tensor(sorted({e - 1 for es in ends for e in es}), dtype=torch.long)
        col = {int(p): i for i, p in enumerate(keep.tolist())}
        logits, cache = self._forward(lay.ids, lay.mask, lay.pos, cache, keep)
        call.tokens_computed += sum(lay.lengths)
        call.forward_calls += 1
        call.per_tree.add("tokens_computed", trees, lay.lengths)
        call.per_tree.forward(trees)
        out = []
        for r, (_, _, splits) in enumerate(items):
            segs, o = [], 0
            for n, e in zip(splits, ends[r]):
                segs.append(self._segment(cache, r, lmax + o, n, logits[r, col[e - 1]]))
                o += n
            out.append(segs)
        return out

    @staticmethod
    def _segment(cache, row: int, start: int, n: int, next_logits) -> KVSegment:
        return cache_segment(cache, row, start, n, next_logits)

    # ------------------------------------------------------------ expand
    def _normalize_nodes(self, tree: BatchedTree, nodes):
        if isinstance(nodes, torch.Tensor):
            if nodes.dim() != 2 or nodes.shape[0] != tree.batch_size:
                raise PolicyError(f"nodes must be [B, M] (one row per tree, -1 = none), got {list(nodes.shape)}")
            nn = nodes.tolist()
            pairs = [(b, n) for b in range(len(nn)) for n in nn[b] if n >= 0]
            return pairs, nn
        return [(int(b), int(n)) for b, n in nodes], None

    def expand(self, tree: BatchedTree, nodes, k: int, sampling: SamplingConfig | None = None) -> ExpandResult:
        """Generate k child steps under each given node, all nodes of all trees in one batch.

        nodes: [B, M] int tensor of node slots per tree (-1 = none, e.g. ``select``'s leaf_node),
        or a sequence of (b, n) pairs. The children are written into the tree (see module doc).
        """
        sampling = sampling or SamplingConfig()
        st = self._state(tree)
        pairs, grid = self._normalize_nodes(tree, nodes)
        if not 1 <= k <= tree.num_actions:
            raise PolicyError(f"k={k} children need 1 <= k <= tree.num_actions={tree.num_actions}")
        if len(set(pairs)) != len(pairs):
            raise PolicyError("a node appears twice in one expand call")
        for b, n in pairs:
            if not 0 <= n < int(tree.num_nodes[b]):
                raise PolicyError(f"node {n} of tree {b} is not in use")
            if bool(tree.terminal[b, n]):
                raise PolicyError(f"node {n} of tree {b} is terminal and cannot be expanded")
            if bool((tree.children_index[b, n, :k] >= 0).any()):
                raise PolicyError(f"node {n} of tree {b} already has children (a node is expanded once)")
        P = len(pairs)
        empty = ExpandResult(
            torch.zeros(0, 2, dtype=torch.long), torch.zeros(0, k, dtype=torch.int32), [],
            torch.zeros(0, k), torch.zeros(0, k, dtype=torch.int32), torch.zeros(0, k, dtype=torch.bool),
        )
        if P == 0:
            return empty
        call = self._begin_call(tree)
        pinned: list = []
        try:
            paths = [tree.path_to_root(b, n)[::-1] for b, n in pairs]
            self._ensure_prefixes(tree, st, pairs, paths, pinned, call)
            children = self._allocate(tree, pairs, k)
            res = self._decode(tree, st, pairs, paths, children, k, sampling, call)
        finally:
            self.store.unpin(pinned)
            self._end_call(call)
        res.counters = call
        if grid is not None:
            cb = torch.full((tree.batch_size, max(len(r) for r in grid), k), -1, dtype=torch.int32)
            p = 0
            for b, row in enumerate(grid):
                for j, n in enumerate(row):
                    if n >= 0:
                        cb[b, j] = res.children[p]
                        p += 1
            res.children_bt = cb
        return res

    def _ensure_prefixes(self, tree, st, pairs, paths, pinned, call) -> None:
        """Pin every segment on the given paths; re-encode the evicted parts (batched)."""
        lens = tree.token_length
        redo = []
        for (b, n), path in zip(pairs, paths):
            keys = [(st.key, b, m) for m in path]
            j = self.store.pin_resident_prefix(keys, pinned) - 1
            reused = int(sum(int(lens[b, m]) for m in path[: j + 1]))
            call.tokens_reused += reused
            call.per_tree.add("tokens_reused", [b], reused)
            if j < len(path) - 1:
                redo.append((b, path, keys, j))
        if not redo:
            return
        ar = st.arena
        items = []
        for b, path, keys, j in redo:
            pre = [self.store.get(key) for key in keys[: j + 1]]
            rest = path[j + 1 :]
            toks = torch.cat([ar.node_tokens(tree, b, m) for m in rest])
            items.append((pre, toks, [int(lens[b, m]) for m in rest]))
        before = call.tokens_computed
        rows_b = [b for b, _, _, _ in redo]
        segs = self._prefill(items, call, rows_b)
        call.tokens_recomputed += call.tokens_computed - before
        call.per_tree.add("tokens_recomputed", rows_b, [int(t.numel()) for _, t, _ in items])
        for (b, path, keys, j), ss in zip(redo, segs):
            for key, s in zip(keys[j + 1 :], ss):
                self.store.put(key, s, pin=True)
                pinned.append(key)

    def _allocate(self, tree, pairs, k) -> torch.Tensor:
        from lrm_engine import ops

        B, A = tree.batch_size, tree.num_actions
        per_tree: list[list[tuple[int, int, int]]] = [[] for _ in range(B)]
        for p, (b, n) in enumerate(pairs):
            for a in range(k):
                per_tree[b].append((p, n, a))
        width = max(len(x) for x in per_tree)
        ln = torch.full((B, width), -1, dtype=torch.int32)
        la = torch.full((B, width), -1, dtype=torch.int32)
        for b, lst in enumerate(per_tree):
            for j, (_, n, a) in enumerate(lst):
                ln[b, j], la[b, j] = n, a
        # The new children's own action priors: uniform until they are expanded. [B, K, A]
        prior = torch.full((B, width, A), 1.0 / A, dtype=torch.float32)
        dev = tree.device
        new = ops.expand(tree, ln.to(dev), la.to(dev), prior.to(dev), backend=self.backend).cpu()
        children = torch.full((len(pairs), k), -1, dtype=torch.int32)
        for b, lst in enumerate(per_tree):
            for j, (p, _, a) in enumerate(lst):
                children[p, a] = new[b, j]
        # Each child's sampling key: from its parent's key and its action (core/rng.py).
        pb = torch.tensor([b for b, _ in pairs], dtype=torch.long)
        pn = torch.tensor([n for _, n in pairs], dtype=torch.long)
        keys = child_key(tree.rng_key[pb, pn].cpu()[:, None], torch.arange(k, dtype=torch.int64)[None, :])
        tree.rng_key[pb[:, None].expand(-1, k), children.long()] = keys.to(tree.rng_key.device)
        return children

    def _step_ends_in_delimiter(self, toks: list[int], last_is_delim: bool) -> bool:
        if last_is_delim:
            return True
        d = self.step.delimiter if self.step is not None else ""
        if self.stop_token_ids is None and len(d) > 1 and len(toks) > 1:
            tail = self.tokenizer.decode(toks[-len(d) :])
            return d in tail
        return False

    def _is_answer(self, toks: list[int]) -> bool:
        if self.step is None or not self.step.answer_prefix:
            return False
        return self.step.answer_prefix in self.tokenizer.decode(toks)

    def _is_empty(self, toks: list[int]) -> bool:
        """The step's text is empty once the delimiter and whitespace are removed."""
        text = self.tokenizer.decode(toks, skip_special_tokens=True)
        d = self.step.delimiter if self.step is not None else ""
        return not (text.replace(d, "") if d else text).strip()

    def _decode(self, tree, st, pairs, paths, children, k, sampling, call) -> ExpandResult:
        P = len(pairs)
        R = P * k
        prefixes = [[self.store.get((st.key, b, m)) for m in path] for (b, _), path in zip(pairs, paths)]
        plen = [sum(s.length for s in pre) for pre in prefixes]
        lmax = max(plen)
        first = torch.stack([pre[-1].next_logits for pre in prefixes]).float()
        cache = self._build_cache(prefixes, plen, lmax)
        if k > 1:
            cache.batch_repeat_interleave(k)
        mask = left_mask(plen, lmax).repeat_interleave(k, 0)
        row_plen = torch.tensor(plen).repeat_interleave(k)
        logits = first.repeat_interleave(k, 0)
        eos_mask = self._eos_mask
        delim_mask = self._delimiter_mask()
        toks: list[list[int]] = [[] for _ in range(R)]
        lp = torch.zeros(R, dtype=torch.float64)
        finished = torch.zeros(R, dtype=torch.bool)
        alive = torch.arange(R)  # global row of each batch row
        # Row r = child (r // k, r % k): its tree, and its sampling stream (key ^ sampling seed).
        row_b = torch.tensor([b for b, _ in pairs], dtype=torch.long).repeat_interleave(k)
        row_key = mix(tree.rng_key[row_b, children.reshape(-1).long()].cpu(), int(sampling.seed))
        # A row may grow until its path fills the model's context.
        room = (torch.full((R,), self.max_step_tokens) if self.context_length is None else
                (self.context_length - row_plen).clamp(min=1, max=self.max_step_tokens))
        t = 0
        while alive.numel():
            x = sample(logits, sampling, keys=mix(row_key[alive], t))
            lp[alive] += torch.log_softmax(logits.float(), -1).gather(1, x[:, None]).squeeze(1).double()
            xs = x.tolist()
            is_eos = eos_mask[x]
            is_delim = delim_mask[x]
            term = torch.zeros(len(xs), dtype=torch.bool)
            ended = torch.zeros(len(xs), dtype=torch.bool)
            rooms = room[alive].tolist()
            for i, r in enumerate(alive.tolist()):
                toks[r].append(xs[i])
                if bool(is_eos[i]):
                    term[i] = ended[i] = True
                elif self._step_ends_in_delimiter(toks[r], bool(is_delim[i])):
                    ended[i] = True
                    term[i] = self._is_answer(toks[r])
                    if not term[i] and self._is_empty(toks[r]):
                        term[i] = True  # an empty step ends the path
                        call.empty_steps += 1
                        call.per_tree.add("empty_steps", [int(row_b[r])], 1)
                elif len(toks[r]) >= rooms[i]:
                    ended[i] = True
                    if len(toks[r]) < self.max_step_tokens or (
                            self.context_length is not None
                            and int(row_plen[r]) + len(toks[r]) >= self.context_length):
                        term[i] = True  # the path fills the model's context: it ends here
                        call.context_stops += 1
                        call.per_tree.add("context_stops", [int(row_b[r])], 1)
            finished[alive[term]] = True
            t += 1
            feed = ~term
            if not bool(feed.any()):
                break
            if not bool(feed.all()):
                idx = feed.nonzero().squeeze(1)
                cache.batch_select_indices(idx.to(self.device))
                mask, alive, x, ended = mask[idx], alive[idx], x[idx], ended[idx]
            mask = torch.cat([mask, torch.ones(len(alive), 1, dtype=torch.long)], 1)
            pos = (row_plen[alive] + (t - 1))[:, None]
            logits, cache = self._forward(x[:, None], mask, pos, cache)
            logits = logits[:, -1]
            call.tokens_computed += len(alive)
            call.forward_calls += 1
            call.per_tree.add("tokens_computed", row_b[alive], 1)
            call.per_tree.forward(row_b[alive])
            if bool(ended.any()):
                for i in ended.nonzero().squeeze(1).tolist():
                    r = int(alive[i])
                    b = pairs[r // k][0]
                    seg = self._segment(cache, i, lmax, t, logits[i])
                    self.store.put((st.key, b, int(children[r // k, r % k])), seg)
                keep = (~ended).nonzero().squeeze(1)
                if keep.numel() == 0:
                    break
                cache.batch_select_indices(keep.to(self.device))
                mask, alive, logits = mask[keep], alive[keep], logits[keep]
        # ---- write into the tree
        lengths = torch.tensor([len(x) for x in toks], dtype=torch.int32).view(P, k)
        lp = lp.float().view(P, k)
        fin = finished.view(P, k)
        prior = lp.softmax(-1) if self.prior == "softmax" else torch.full((P, k), 1.0 / k)
        dev = tree.device
        out_tokens: list[list[torch.Tensor]] = []
        for p, (b, n) in enumerate(pairs):
            row = []
            for a in range(k):
                r = p * k + a
                c = int(children[p, a])
                tt = torch.tensor(toks[r], dtype=torch.int64)
                tree.token_offset[b, c] = st.arena.append(tt)
                tree.token_length[b, c] = len(toks[r])
                tree.terminal[b, c] = bool(fin[p, a])
                row.append(tt)
            out_tokens.append(row)
            tree.children_prior[b, n, :k] = prior[p].to(dev)
            tree.children_prior[b, n, k:] = BatchedTree.INVALID_PRIOR
        return ExpandResult(
            nodes=torch.tensor(pairs, dtype=torch.long).view(P, 2),
            children=children,
            tokens=out_tokens,
            logprob_sum=lp,
            length=lengths,
            finished=fin,
        )
