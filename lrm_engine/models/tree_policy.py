"""TreePolicy: the ``tree`` policy — transformers' own Llama / Qwen2 / Mistral code, with attention
and cache replaced by the engine's tree attention over per-node KV segments.

What is replaced, and how (transformers 5.x extension points, nothing monkey-patched):

* **Attention.** An attention function registered once as ``"lrm_tree"`` in transformers'
  ``AttentionInterface`` (``ALL_ATTENTION_FUNCTIONS``). The policy selects it only for the
  duration of its own forward passes (``model.config._attn_implementation`` is switched and
  restored), so the same model object keeps working with ``generate`` or the ``hf`` policy. The
  function calls :func:`lrm_engine.ops.tree_attention.tree_attention` with the plan of the current
  forward pass. Because ``"lrm_tree"`` has no mask function, transformers builds no mask at all:
  the plan carries the whole (tree + causal) structure.
* **Cache.** :class:`TreeKVCache`, a ``transformers.Cache`` subclass with no layer objects. For one
  batch of rows it lays out, per layer, one KV pool ``[P, Hkv, D]``: first every *distinct*
  ancestor segment of the rows (a node's segment is packed once however many rows — siblings,
  cousins — descend from it; nothing is copied per child), then one "own" region per row for the
  tokens the row computes in this call. ``update(key, value, layer_idx)`` scatters the new tokens'
  K/V (already rotated by the model's RoPE) into the own regions and hands the pools to the
  attention function. Before each forward pass the cache builds the plan once
  (``build_plan(parent, seg_len, query_nodes, q_len, seg_offset=...)``: per row one group whose
  chain is its ancestors' segments + its own growing segment, the own one causal); all layers
  reuse it.
* **Packing.** Rows are packed into one sequence (``input_ids [1, T]``), position ids = each
  token's depth in its path (prefix length + offset), logits only at the positions asked for. No
  padding, no attention mask, no per-row concatenated caches.

Everything else — ``init_roots``, ``expand`` (validation, slots, the decode loop, stopping rules,
seeded sampling, priors, terminal flags, token spans, counters), the KV store with its byte budget,
LRU eviction and transparent recomputation (an evicted segment is recomputed by running the path's
tokens through this forward, on top of the deepest resident prefix) — is :class:`HFPolicy`'s, inherited
unchanged: this class only overrides the three model-plumbing hooks that ``HFPolicy`` routes every
forward pass through (``_build_cache``, ``_forward``, ``_segment``). Hence the same
``ExpandResult``, the same counters, and — given the same logits — the same sampled tokens
(one generator per call, consumed row by row in the same order).

Cost vs ``hf``: per ``expand`` call each distinct ancestor segment is copied once into the call's
pool (``hf`` copies every node's whole prefix into a padded cache, repeats it for the k children,
and ``DynamicCache`` re-concatenates the full cache at every decode step).

Supported: ``model_type`` llama / qwen2 / mistral with full causal attention on every layer (no
sliding window — Mistral's ``sliding_window`` must be null or at least ``max_position_embeddings``;
Qwen2 with ``use_sliding_window=false``). Anything else is refused with a message naming the
``hf`` policy.
"""

from __future__ import annotations

from typing import Sequence

import torch

from transformers.cache_utils import Cache

from lrm_engine.models.hf_policy import ExpandResult, HFPolicy, PolicyError
from lrm_engine.models.kv_store import KVSegment
from lrm_engine.ops import tree_attention as ta

__all__ = ["TreePolicy", "TreeKVCache", "ExpandResult", "PolicyError", "ATTN_IMPLEMENTATION"]

ATTN_IMPLEMENTATION = "lrm_tree"
SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "mistral")
_ATTENTION_CLASSES = ("LlamaAttention", "Qwen2Attention", "MistralAttention")
_PLAN_KW = "lrm_tree_plan"
_BACKEND_KW = "lrm_tree_backend"


# ---------------------------------------------------------------------------------- attention
def tree_attention_forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """The ``"lrm_tree"`` attention function.

    query [1, Hq, T, D] (the packed new tokens, RoPE applied); key / value: the layer's KV pools
    [P, Hkv, D] as returned by ``TreeKVCache.update``; the plan comes in ``kwargs`` (transformers
    forwards the model's extra keyword arguments down to the attention function).
    Returns (attn_output [1, T, Hq, D], None).
    """
    plan = kwargs.get(_PLAN_KW)
    if plan is None or key.dim() != 3:
        raise PolicyError(
            f"attention implementation {ATTN_IMPLEMENTATION!r} only runs inside the lrm_engine tree "
            f"policy's forward pass (it needs a TreeKVCache and a tree-attention plan); set the "
            f"model's attn_implementation back to 'sdpa' or 'eager' for other uses"
        )
    if dropout:
        raise PolicyError("the tree policy runs in eval mode (attention dropout must be 0)")
    q = query[0].transpose(0, 1)  # [T, Hq, D]
    o, _ = ta.tree_attention(q, key, value, plan, scale=scaling, backend=kwargs.get(_BACKEND_KW, "auto"))
    return o.unsqueeze(0), None


def _register_attention() -> None:
    from transformers import AttentionInterface
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    if ALL_ATTENTION_FUNCTIONS.get(ATTN_IMPLEMENTATION) is not tree_attention_forward:
        AttentionInterface.register(ATTN_IMPLEMENTATION, tree_attention_forward)


# ---------------------------------------------------------------------------------- cache
class TreeKVCache(Cache):
    """The KV of one batch of rows over the tree: shared ancestor segments + per-row own regions.

    Node tables (python lists, one entry per node of this batch): ``parent`` (-1 = root),
    ``off`` (first pool row), ``len`` (tokens held), ``own`` (True for a row's own region).
    ``rows[i]`` is the own node of batch row i (rows leave with ``batch_select_indices``).
    Pools: per layer ``k[l], v[l]`` of shape [P, Hkv, D] in the model's dtype.
    """

    def __init__(self, n_layers: int, kv_heads: int, head_dim: int, dtype, device, *,
                 min_capacity: int = 1, chunk_size: int = ta.DEFAULT_CHUNK_SIZE,
                 plan_backend: str = "auto"):
        super().__init__(layers=[])
        self.n_layers, self.kv_heads, self.head_dim = n_layers, kv_heads, head_dim
        self.dtype, self.device = dtype, device
        self.min_capacity = max(1, int(min_capacity))
        self.chunk_size = int(chunk_size)
        self.plan_backend = plan_backend
        self.parent: list[int] = []
        self.off: list[int] = []
        self.len: list[int] = []
        self.own: list[bool] = []
        self.rows: list[int] = []
        self.prefix_len: list[int] = []  # per row: tokens in its ancestor segments
        self.pad = 0  # the hf policy's lmax: own-token offsets arrive as lmax + offset
        self.shared_tokens = 0  # pool rows [0, shared_tokens): the packed ancestor segments
        self.cap: dict[int, int] = {}  # own node -> tokens its region holds
        self.k: list[torch.Tensor] = []
        self.v: list[torch.Tensor] = []
        self._shared: list[tuple[int, KVSegment]] = []  # (node, segment) to pack
        self._idx: torch.Tensor | None = None
        self.plan = None

    # -------------------------------------------------- transformers Cache surface
    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        """Write the new tokens' K/V ([1, Hkv, T, D]) into the own regions; return the pools."""
        if self._idx is None:
            raise PolicyError("TreeKVCache.update outside a tree-policy forward pass")
        kp, vp = self.k[layer_idx], self.v[layer_idx]
        kp[self._idx] = key_states[0].transpose(0, 1).to(kp.dtype)
        vp[self._idx] = value_states[0].transpose(0, 1).to(vp.dtype)
        return kp, vp

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return 0  # positions are always passed explicitly (per-row depths)

    def get_max_cache_shape(self, layer_idx: int = 0) -> int:
        return -1

    @property
    def is_compileable(self) -> bool:
        return False

    @property
    def is_sliding(self):
        return [False] * self.n_layers

    @property
    def is_linear(self):
        return [False] * self.n_layers

    @property
    def is_dummy(self):
        return [False] * self.n_layers

    # -------------------------------------------------- layout
    def add_rows(self, prefixes: list[list[KVSegment]]) -> None:
        """One row per prefix (its ancestor segments, root first); distinct segments packed once."""
        seen: dict[tuple[int, int], int] = {}
        for pre in prefixes:
            par, plen = -1, 0
            for seg in pre:
                key = (par, id(seg))
                node = seen.get(key)
                if node is None:
                    node = self._new_node(par, self.shared_tokens, seg.length, own=False)
                    self._shared.append((node, seg))
                    self.shared_tokens += seg.length
                    seen[key] = node
                par, plen = node, plen + seg.length
            self.rows.append(self._new_node(par, -1, 0, own=True))
            self.prefix_len.append(plen)

    def _new_node(self, parent: int, off: int, length: int, own: bool) -> int:
        self.parent.append(parent)
        self.off.append(off)
        self.len.append(length)
        self.own.append(own)
        return len(self.parent) - 1

    def batch_repeat_interleave(self, repeats: int) -> None:
        """Each row becomes ``repeats`` rows, each with its own (empty) region, same ancestors."""
        rows, plen = [], []
        for node, p in zip(self.rows, self.prefix_len):
            if self.len[node]:
                raise PolicyError("TreeKVCache: rows can only be repeated before they hold tokens")
            rows.append(node)
            plen.append(p)
            for _ in range(repeats - 1):
                rows.append(self._new_node(self.parent[node], -1, 0, own=True))
                plen.append(p)
        self.rows, self.prefix_len = rows, plen

    def batch_select_indices(self, indices) -> None:
        """Keep only these rows (their nodes stay in the tables; they just stop querying)."""
        idx = indices.tolist() if isinstance(indices, torch.Tensor) else list(indices)
        self.rows = [self.rows[i] for i in idx]
        self.prefix_len = [self.prefix_len[i] for i in idx]

    def _allocate(self, need: dict[int, int]) -> None:
        """(Re)build the pools: own node n gets room for ``need[n]`` tokens (at least
        ``min_capacity``; growing doubles); the shared part and written tokens are kept."""
        own_nodes = [n for n in range(len(self.parent)) if self.own[n]]
        old_cap = self.cap if self.k else {}
        cap = {}
        for n in own_nodes:
            c = max(need.get(n, 0), self.len[n], self.min_capacity)
            if n in old_cap and c > old_cap[n]:
                c = max(c, 2 * old_cap[n])
            cap[n] = max(c, old_cap.get(n, 0))
        P = self.shared_tokens + sum(cap.values())
        shape = (P, self.kv_heads, self.head_dim)
        k = [torch.empty(shape, dtype=self.dtype, device=self.device) for _ in range(self.n_layers)]
        v = [torch.empty(shape, dtype=self.dtype, device=self.device) for _ in range(self.n_layers)]
        if self.k:  # growing: keep the shared part and the tokens already written
            S = self.shared_tokens
            for l in range(self.n_layers):
                k[l][:S], v[l][:S] = self.k[l][:S], self.v[l][:S]
        else:  # first allocation: pack every distinct ancestor segment once
            for node, seg in self._shared:
                o, n = self.off[node], seg.length
                for l in range(self.n_layers):
                    k[l][o : o + n] = seg.keys[l].transpose(0, 1)
                    v[l][o : o + n] = seg.values[l].transpose(0, 1)
            self._shared = []
        o = self.shared_tokens
        for node in own_nodes:
            n = self.len[node]
            if n and self.k:
                old = self.off[node]
                for l in range(self.n_layers):
                    k[l][o : o + n] = self.k[l][old : old + n]
                    v[l][o : o + n] = self.v[l][old : old + n]
            self.off[node] = o
            o += cap[node]
        self.k, self.v, self.cap = k, v, cap

    def begin(self, n_new: Sequence[int]) -> tuple[torch.Tensor, "ta.TreeAttentionPlan"]:
        """Reserve ``n_new[i]`` tokens at the end of row i's own region; build the plan.

        Returns the packed position ids [T] (depth of each new token in its path) and the
        plan (one group per row, q_len = n_new[i]), cached for every layer of this pass.
        """
        if len(n_new) != len(self.rows):
            raise PolicyError(f"{len(n_new)} token counts for {len(self.rows)} rows")
        need = {r: self.len[r] + n for r, n in zip(self.rows, n_new)}
        if not self.k or any(r not in self.cap or need[r] > self.cap[r] for r in self.rows):
            self._allocate(need)
        idx, pos = [], []
        for r, n, p in zip(self.rows, n_new, self.prefix_len):
            o, L = self.off[r], self.len[r]
            idx.extend(range(o + L, o + L + n))
            pos.extend(range(p + L, p + L + n))
            self.len[r] = L + n
        self._idx = torch.tensor(idx, dtype=torch.long, device=self.device)
        self.plan = ta.build_plan(
            self.parent, self.len, self.rows, list(n_new), chunk_size=self.chunk_size,
            seg_offset=self.off, backend=self.plan_backend,
        )
        if self.device.type != "cpu":
            self.plan = self.plan.to(self.device)
        return torch.tensor(pos, dtype=torch.long), self.plan

    def end(self) -> None:
        self._idx = None

    def row_segment(self, row: int, start: int, n: int, next_logits) -> KVSegment:
        """Tokens [start, start + n) of row ``row``'s own region, as a stand-alone KVSegment."""
        node = self.rows[row]
        if start < 0 or start + n > self.len[node]:
            raise PolicyError(f"segment [{start}, {start + n}) outside row {row}'s {self.len[node]} tokens")
        o = self.off[node] + start
        ks = [t[o : o + n].transpose(0, 1).clone(memory_format=torch.contiguous_format) for t in self.k]
        vs = [t[o : o + n].transpose(0, 1).clone(memory_format=torch.contiguous_format) for t in self.v]
        return KVSegment(ks, vs, None if next_logits is None else next_logits.clone())


# ---------------------------------------------------------------------------------- policy
def check_tree_architecture(model) -> None:
    """Raise PolicyError unless ``model`` is a Llama / Qwen2 / Mistral decoder with full attention."""
    cfg = model.config
    mt = getattr(cfg, "model_type", None)
    fix = "use the `hf` policy (policy=hf), which runs any architecture through plain transformers"
    if mt not in SUPPORTED_MODEL_TYPES:
        raise PolicyError(
            f"the tree policy runs the Llama / Qwen2 / Mistral family ({', '.join(SUPPORTED_MODEL_TYPES)}); "
            f"this model is {type(model).__name__} (model_type={mt!r}): {fix}"
        )
    base = getattr(model, "model", None)
    layers = getattr(base, "layers", None)
    if not layers:
        raise PolicyError(f"{type(model).__name__} has no decoder layers at model.layers: {fix}")
    kinds = sorted({type(l.self_attn).__name__ for l in layers if hasattr(l, "self_attn")})
    if not kinds or any(k not in _ATTENTION_CLASSES for k in kinds):
        raise PolicyError(
            f"the tree policy replaces only the standard Llama-family attention; {type(model).__name__} "
            f"uses {', '.join(kinds) or 'no self_attn'}: {fix}"
        )
    layer_types = getattr(cfg, "layer_types", None) or []
    odd = sorted({t for t in layer_types if t != "full_attention"})
    sw = getattr(cfg, "sliding_window", None)
    max_pos = getattr(cfg, "max_position_embeddings", None)
    if odd or (mt == "mistral" and sw is not None and not (max_pos and sw >= max_pos)):
        what = ", ".join(odd) if odd else f"sliding_window={sw}"
        raise PolicyError(
            f"the tree policy supports full causal attention only; this {mt} model uses {what} "
            f"(the tree-attention plan does not clip segments to a window): {fix}"
        )
    for attr in ("attn_logit_softcapping", "alibi", "use_alibi"):
        if getattr(cfg, attr, None):
            raise PolicyError(f"the tree policy does not support {attr}={getattr(cfg, attr)!r}: {fix}")


class TreePolicy(HFPolicy):
    """The ``tree`` policy: HFPolicy's interface and semantics, tree attention over node segments.

    Extra keyword arguments (besides HFPolicy's): ``attn_backend`` ("auto", "reference", "cpp",
    "triton": the tree-attention kernel), ``plan_backend`` ("auto", "cpp", "reference"),
    ``chunk_size`` (plan chunking of long segments).
    """

    name = "tree"

    def __init__(self, model, tokenizer, *, attn_backend: str = "auto", plan_backend: str = "auto",
                 chunk_size: int = ta.DEFAULT_CHUNK_SIZE, **kw):
        check_tree_architecture(model)
        super().__init__(model, tokenizer, **kw)
        if attn_backend not in ("auto",) + ta.BACKENDS:
            raise ValueError(f"attn_backend must be one of auto, {', '.join(ta.BACKENDS)}; got {attn_backend!r}")
        self.attn_backend = attn_backend
        self.plan_backend = plan_backend
        self.chunk_size = int(chunk_size)
        cfg = model.config
        self._n_layers = int(cfg.num_hidden_layers)
        self._kv_heads = int(getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads)
        self._head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads)
        self._dtype = next(model.parameters()).dtype
        _register_attention()

    # HFPolicy routes every forward pass (prompt prefill, recompute after eviction, decoding)
    # through these three hooks; overriding them is all it takes to run on tree attention.
    def _build_cache(self, prefixes, plen, lmax):
        cache = TreeKVCache(
            self._n_layers, self._kv_heads, self._head_dim, self._dtype, self.device,
            min_capacity=self.max_step_tokens, chunk_size=self.chunk_size, plan_backend=self.plan_backend,
        )
        cache.add_rows(prefixes)
        cache.pad = int(lmax)
        return cache

    def _segment(self, cache, row: int, start: int, n: int, next_logits) -> KVSegment:
        return cache.row_segment(row, start - cache.pad, n, next_logits)

    def _forward(self, ids, mask, pos, cache, keep=None):
        """Packed forward of the rows' new tokens over the tree; returns (logits [R, S', V], cache).

        ids [R, S] (each row's real tokens first, then padding), mask [R, lmax + S] (hf-policy
        layout: the last S columns mark real tokens), pos [R, S] (checked against the depths the
        cache derives from its prefixes), keep: column indices into S (None: all S columns).
        Padding positions get zero logits (the hf policy never reads them).
        """
        R, S = ids.shape
        real = mask[:, -S:].to(torch.bool)
        n_new = real.sum(1)
        if not bool((real == (torch.arange(S)[None, :] < n_new[:, None])).all()):
            raise PolicyError("tree policy: each row's new tokens must come first (right padding)")
        n_new = n_new.tolist()
        with torch.inference_mode():
            positions, plan = cache.begin(n_new)
        want = pos.cpu()[real].reshape(-1).long() if pos is not None else None
        if want is not None and not torch.equal(want, positions):
            raise PolicyError("tree policy: position ids disagree with the tree depths")
        flat = ids.to(self.device)[real.to(self.device)].reshape(1, -1)
        cols = torch.arange(S) if keep is None else keep.to(torch.long).cpu()
        starts = [0]
        for n in n_new:
            starts.append(starts[-1] + n)
        pick_r, pick_c, pick_t = [], [], []
        for r in range(R):
            for j, c in enumerate(cols.tolist()):
                if c < n_new[r]:
                    pick_r.append(r)
                    pick_c.append(j)
                    pick_t.append(starts[r] + c)
        pick = torch.tensor(pick_t, dtype=torch.long)
        kw = dict(input_ids=flat, position_ids=positions.to(self.device)[None], use_cache=True,
                  attention_mask=None)
        kw[self._cache_kw] = cache
        kw[_PLAN_KW] = plan
        kw[_BACKEND_KW] = self.attn_backend
        if self._logits_to_keep:
            kw["logits_to_keep"] = pick.to(self.device)
        cfg = self.model.config
        prev = cfg._attn_implementation
        try:
            cfg._attn_implementation = ATTN_IMPLEMENTATION
            with torch.inference_mode():
                out = self.model(**kw)
        finally:
            cfg._attn_implementation = prev
            cache.end()
        logits = out.logits[0].float()
        if not self._logits_to_keep:
            logits = logits[pick.to(logits.device)]
        full = torch.zeros(R, len(cols), logits.shape[-1], dtype=torch.float32, device=logits.device)
        full[torch.tensor(pick_r, dtype=torch.long, device=full.device),
             torch.tensor(pick_c, dtype=torch.long, device=full.device)] = logits
        return full, cache
