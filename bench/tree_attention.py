"""Tree attention benchmark: many branches sharing one long prefix (the search-tree shape).

64 branches share a 1,024-token prefix and each has 32 new tokens (a prefill of one step),
12 query heads / 2 KV heads (GQA), head dim 128, fp32 on CPU, one compute thread.

    cpp             lrm_engine tree attention, C++ backend: segment-major -- the prefix is read
                    once (in chunks) for all 64 x 32 x 6 stacked queries of each KV head, partial
                    results merged by log-sum-exp. The plan is built once outside the timed loop
                    (it is shared by every layer of a forward pass); its build time is reported.
    sdpa_per_branch the usual way: for each branch, cat(prefix K/V, own K/V) then
                    torch.nn.functional.scaled_dot_product_attention with the causal rule as a
                    boolean mask (enable_gqa=True: no K/V head repetition).
    torch_cascade   the strongest torch baseline (cascade / shared-prefix attention as FlashInfer
                    and Hydragen do it, in plain torch): every branch's queries against the shared
                    prefix in one call of torch's CPU flash-attention kernel (which returns the
                    log-sum-exp), plus each branch's own segment in one batched call, merged by
                    log-sum-exp. This is the fair baseline
                    (`speedup_vs_torch_cascade`); the per-branch figures stay as extras.

Sweep: the prefill comparison runs at every (branches x prefix) point of `--sweep` (the size that
matters: the longer the shared prefix and the more branches, the more a per-branch layout
re-reads); the headline `median_s` / `ratios` are the `--branches x --prefix` point.

kv_bytes_vs_sdpa = K/V bytes the baseline materialises and reads (every branch its own copy of
prefix + own tokens) / K/V bytes ours reads (every pool row once).

    python bench/tree_attention.py [--repeats 7] [--branches 64] [--prefix 1024] [--new 32]
                                   [--sweep 16x1024,64x256,64x1024,64x2048]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402  (before torch: pins threads)

THREADS = _common.pin_threads()

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from lrm_engine.ops import tree_attention as ta  # noqa: E402


def _attention_lse(q, k, v, mask=None):
    """softmax(q k^T / sqrt(D)) v and its log-sum-exp: q [N, H, Lq, D], k/v [N, H, Lk, D].

    torch's CPU flash-attention kernel (the op under F.scaled_dot_product_attention, which also
    returns the log-sum-exp that a cascade merge needs); mask: additive float [Lq, Lk] or None.
    """
    return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, False, attn_mask=mask)


def cascade_attention(q, k_pre, v_pre, k_own, v_own, causal: bool) -> torch.Tensor:
    """Shared-prefix (cascade) attention in plain torch: one pass over the prefix for all branches.

    q [B, Lq, Hq, D]; k_pre/v_pre [Lp, Hkv, D]; k_own/v_own [B, Lo, Hkv, D] (each branch's own
    tokens; causal: query t sees own tokens <= t + Lo - Lq). Returns [B * Lq, Hq, D]. The g = Hq /
    Hkv query heads of a KV head are stacked along the query axis, so K/V heads are never repeated.
    """
    B, Lq, Hq, D = q.shape
    Hkv, Lo = k_pre.shape[1], k_own.shape[1]
    g = Hq // Hkv
    qh = q.reshape(B, Lq, Hkv, g, D).permute(2, 0, 3, 1, 4)  # [Hkv, B, g, Lq, D]
    # 1) every branch's queries against the shared prefix: one call, the prefix read once
    o1, lse1 = _attention_lse(qh.reshape(1, Hkv, B * g * Lq, D), k_pre.transpose(0, 1)[None],
                              v_pre.transpose(0, 1)[None])
    o1 = o1.view(Hkv, B, g, Lq, D).transpose(0, 1)  # [B, Hkv, g, Lq, D]
    lse1 = lse1.view(Hkv, B, g, Lq, 1).transpose(0, 1)
    # 2) each branch's own segment, all branches in one batched call
    mask = None
    if causal:
        mask = torch.zeros(Lq, Lo).masked_fill(~torch.ones(Lq, Lo, dtype=torch.bool).tril(Lo - Lq), float("-inf"))
        mask = mask.repeat(g, 1)
    o2, lse2 = _attention_lse(qh.transpose(0, 1).reshape(B, Hkv, g * Lq, D), k_own.permute(0, 2, 1, 3),
                              v_own.permute(0, 2, 1, 3), mask)
    o2, lse2 = o2.view(B, Hkv, g, Lq, D), lse2.view(B, Hkv, g, Lq, 1)
    # 3) merge the two partial softmaxes by their log-sum-exps
    m = torch.maximum(lse1, lse2)
    w1, w2 = torch.exp(lse1 - m), torch.exp(lse2 - m)
    o = (o1 * w1 + o2 * w2) / (w1 + w2)  # [B, Hkv, g, Lq, D]
    return o.permute(0, 3, 1, 2, 4).reshape(B * Lq, Hq, D)


def decode_workload(args, B, Lp, Ln, Hq, Hkv, D) -> dict:
    """Extra figure: the same tree, but each branch decodes ONE token (q_len 1) after its Ln."""
    torch.manual_seed(1)
    parent = [-1] + [0] * B
    seg_len = [Lp] + [Ln + 1] * B
    P = Lp + B * (Ln + 1)
    k_pool, v_pool = torch.randn(P, Hkv, D), torch.randn(P, Hkv, D)
    q = torch.randn(B, Hq, D)
    plan = ta.build_plan(parent, seg_len, list(range(1, B + 1)), [1] * B, chunk_size=args.chunk)

    def sdpa() -> torch.Tensor:
        out = torch.empty(B, Hq, D)
        for b in range(B):
            r0 = Lp + b * (Ln + 1)
            k = torch.cat([k_pool[:Lp], k_pool[r0 : r0 + Ln + 1]]).transpose(0, 1)
            v = torch.cat([v_pool[:Lp], v_pool[r0 : r0 + Ln + 1]]).transpose(0, 1)
            o = F.scaled_dot_product_attention(q[b, :, None][None], k[None], v[None], enable_gqa=True)
            out[b] = o[0, :, 0]
        return out

    def ours() -> torch.Tensor:
        return ta.tree_attention(q, k_pool, v_pool, plan, backend="cpp", num_threads=1)[0]

    k_own, v_own = k_pool[Lp:].view(B, Ln + 1, Hkv, D), v_pool[Lp:].view(B, Ln + 1, Hkv, D)

    def cascade() -> torch.Tensor:
        return cascade_attention(q[:, None], k_pool[:Lp], v_pool[:Lp], k_own, v_own, causal=False)

    t = _common.time_interleaved({"sdpa_per_branch": (sdpa, None), "torch_cascade": (cascade, None),
                                  "cpp": (ours, None)}, repeats=args.repeats, warmup=1)
    med = {k: v["median_s"] for k, v in t.items()}
    return {
        "workload": f"{B} branches x 1 query, prefix {Lp} + own {Ln + 1} tokens",
        "median_s": med,
        "median_cpu_s": {k: v["median_cpu_s"] for k, v in t.items()},
        "speedup_vs_torch_cascade": round(med["torch_cascade"] / med["cpp"], 3),
        "speedup_vs_sdpa": round(med["sdpa_per_branch"] / med["cpp"], 3),
        "max_abs_diff_vs_sdpa": float((sdpa() - ours()).abs().max()),
        "max_abs_diff_cascade_vs_sdpa": float((sdpa() - cascade()).abs().max()),
    }


def prefill_workload(args, B, Lp, Ln, Hq, Hkv, D, have_cpp, repeats) -> dict:
    """B branches x Ln new tokens (one step's prefill) on a shared Lp-token prefix."""
    torch.manual_seed(0)
    # Tree: node 0 = the shared prefix, nodes 1..B = the branches' new steps.
    parent = [-1] + [0] * B
    seg_len = [Lp] + [Ln] * B
    query_nodes = list(range(1, B + 1))
    q_len = [Ln] * B
    P = Lp + B * Ln
    k_pool = torch.randn(P, Hkv, D)
    v_pool = torch.randn(P, Hkv, D)
    q = torch.randn(B * Ln, Hq, D)

    t0 = time.perf_counter()
    plan = ta.build_plan(parent, seg_len, query_nodes, q_len, chunk_size=args.chunk)
    plan_s = time.perf_counter() - t0

    # Baseline inputs, laid out as a per-branch KV cache would hold them.
    mask = torch.ones(Ln, Lp + Ln, dtype=torch.bool)
    mask[:, Lp:] = torch.ones(Ln, Ln, dtype=torch.bool).tril()
    k_pre, v_pre = k_pool[:Lp], v_pool[:Lp]

    def sdpa_per_branch() -> torch.Tensor:
        out = torch.empty(B * Ln, Hq, D)
        for b in range(B):
            r0 = Lp + b * Ln
            k = torch.cat([k_pre, k_pool[r0 : r0 + Ln]]).transpose(0, 1)  # [Hkv, L, D]
            v = torch.cat([v_pre, v_pool[r0 : r0 + Ln]]).transpose(0, 1)
            qb = q[b * Ln : (b + 1) * Ln].transpose(0, 1)  # [Hq, Ln, D]
            o = F.scaled_dot_product_attention(qb[None], k[None], v[None], attn_mask=mask, enable_gqa=True)
            out[b * Ln : (b + 1) * Ln] = o[0].transpose(0, 1)
        return out

    gs = Hq // Hkv

    def sdpa_per_branch_repeat_kv() -> torch.Tensor:
        # As Hugging Face's sdpa attention does it: K/V heads repeated (materialised) first.
        out = torch.empty(B * Ln, Hq, D)
        for b in range(B):
            r0 = Lp + b * Ln
            k = torch.cat([k_pre, k_pool[r0 : r0 + Ln]]).transpose(0, 1).repeat_interleave(gs, 0)
            v = torch.cat([v_pre, v_pool[r0 : r0 + Ln]]).transpose(0, 1).repeat_interleave(gs, 0)
            qb = q[b * Ln : (b + 1) * Ln].transpose(0, 1)
            o = F.scaled_dot_product_attention(qb[None], k[None], v[None], attn_mask=mask)
            out[b * Ln : (b + 1) * Ln] = o[0].transpose(0, 1)
        return out

    k_own, v_own = k_pool[Lp:].view(B, Ln, Hkv, D), v_pool[Lp:].view(B, Ln, Hkv, D)

    def torch_cascade() -> torch.Tensor:
        return cascade_attention(q.view(B, Ln, Hq, D), k_pre, v_pre, k_own, v_own, causal=True)

    def ours() -> torch.Tensor:
        return ta.tree_attention(q, k_pool, v_pool, plan, backend="cpp", num_threads=1)[0]

    cases = {"sdpa_per_branch": (sdpa_per_branch, None),
             "sdpa_per_branch_repeat_kv": (sdpa_per_branch_repeat_kv, None),
             "torch_cascade": (torch_cascade, None)}
    if have_cpp:
        cases["cpp"] = (ours, None)
    timing = _common.time_interleaved(cases, repeats=repeats, warmup=1)
    med = {k: v["median_s"] for k, v in timing.items()}
    med_cpu = {k: v["median_cpu_s"] for k, v in timing.items()}

    o_ref = sdpa_per_branch()
    agreement = {"max_abs_diff_cascade_vs_sdpa": float((o_ref - torch_cascade()).abs().max())}
    if have_cpp:
        o_cpp, lse = ta.tree_attention(q, k_pool, v_pool, plan, backend="cpp", num_threads=1)
        agreement.update(max_abs_diff_vs_sdpa=float((o_ref - o_cpp).abs().max()),
                         lse_finite=bool(torch.isfinite(lse).all()))

    bytes_per_token = Hkv * D * 2 * 4  # K and V, fp32
    kv_baseline = B * (Lp + Ln) * bytes_per_token
    kv_ours = plan.kv_tokens_read() * bytes_per_token
    flops = 4 * B * Ln * Hq * D * (Lp + (Ln + 1) / 2)  # QK^T + PV over the visible tokens

    def ratio(name: str, m: dict = med) -> float | None:
        if "cpp" not in m:
            return None
        return round(m[name] / m["cpp"], 3)

    return {
        "branches": B, "prefix_tokens": Lp, "chunks": plan.num_chunks,
        "median_s": med,
        "ratios": {
            "speedup_vs_torch_cascade": ratio("torch_cascade"),
            "speedup_vs_sdpa": ratio("sdpa_per_branch"),
            "kv_bytes_vs_sdpa": round(kv_baseline / kv_ours, 3),
            "speedup_vs_torch_cascade_cpu_time": ratio("torch_cascade", med_cpu),
            "speedup_vs_sdpa_cpu_time": ratio("sdpa_per_branch", med_cpu),
            "speedup_vs_sdpa_repeat_kv": ratio("sdpa_per_branch_repeat_kv"),
        },
        "median_cpu_s": med_cpu,
        "gflops": {k: round(flops / v / 1e9, 2) for k, v in med.items()},
        "kv_bytes": {"sdpa_per_branch": kv_baseline, "cpp": kv_ours},
        "plan_build_s": plan_s,
        "agreement": agreement,
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--branches", type=int, default=64)
    ap.add_argument("--prefix", type=int, default=1024)
    ap.add_argument("--new", type=int, default=32)
    ap.add_argument("--hq", type=int, default=12)
    ap.add_argument("--hkv", type=int, default=2)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--chunk", type=int, default=ta.DEFAULT_CHUNK_SIZE)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--sweep", default="16x1024,64x256,64x1024,64x2048",
                    help="comma-separated BRANCHESxPREFIX prefill points (5 repeats each); '' skips")
    ap.add_argument("--no-decode", action="store_true", help="skip the extra q_len = 1 workload")
    args = ap.parse_args()
    t_start = time.perf_counter()
    B, Lp, Ln, Hq, Hkv, D = args.branches, args.prefix, args.new, args.hq, args.hkv, args.dim
    have_cpp = ta.cpp_available()

    head = prefill_workload(args, B, Lp, Ln, Hq, Hkv, D, have_cpp, args.repeats)
    sweep = []
    for point in [x for x in args.sweep.split(",") if x.strip()]:
        b, lp = (int(v) for v in point.lower().split("x"))
        r = head if (b, lp) == (B, Lp) else prefill_workload(args, b, lp, Ln, Hq, Hkv, D, have_cpp, 5)
        sweep.append({k: r[k] for k in ("branches", "prefix_tokens", "median_s", "ratios", "agreement")})
        print(f"prefill {b} x {lp}: " + ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in r["median_s"].items()),
              file=sys.stderr)
    decode = decode_workload(args, B, Lp, Ln, Hq, Hkv, D) if have_cpp and not args.no_decode else None

    record = {
        "bench": "tree_attention",
        "workload": {
            "branches": B, "prefix_tokens": Lp, "new_tokens_per_branch": Ln, "q_heads": Hq,
            "kv_heads": Hkv, "head_dim": D, "dtype": "float32", "device": "cpu",
            "chunk_size": args.chunk, "chunks": head["chunks"], "repeats": args.repeats,
            "threads": THREADS,
        },
        "median_s": head["median_s"],
        "ratios": head["ratios"],
        "targets": {"speedup_vs_torch_cascade": 1, "speedup_vs_sdpa": 2},
        "median_cpu_s": head["median_cpu_s"],
        "gflops": head["gflops"],
        "kv_bytes": head["kv_bytes"],
        "plan_build_s": head["plan_build_s"],
        "sweep": sweep,
        "decode_q_len_1": decode,
        "agreement": head["agreement"],
        "load_average": _common.load_average(),
        "versions": {"torch": torch.__version__, "python": sys.version.split()[0]},
        "machine": _common.machine(),
        "date": _common.utc_now(),
        "cpp_missing": None if have_cpp else "lrm_engine._C has no tree_attention_fwd (not built)",
        "bench_wall_s": round(time.perf_counter() - t_start, 1),
    }
    _common.emit(record)
    return 0 if have_cpp else 1


if __name__ == "__main__":
    sys.exit(main())
