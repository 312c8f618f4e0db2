"""Compile every Triton kernel for a GPU target without a GPU (catches what the interpreter misses).

The interpreter runs kernels as numpy and does not type-check them the way the compiler does
(loop-carried types, scalar/tensor mixing, fp64 math lowering). This module runs Triton's real
compiler pipeline (TTIR -> TTGIR -> LLVM IR -> PTX -> cubin with the bundled ptxas) for every
kernel and every constexpr variant the backend launches. No GPU is needed.

    python -m lrm_engine.ops.triton.compile_check [cuda ARCH]   # default: cuda 90

It must run with TRITON_INTERPRET unset (the kernels have to be real JIT functions).
"""

from __future__ import annotations

import os
import sys

P32, P64, PF, PF64, PU8 = "*i32", "*i64", "*fp32", "*fp64", "*u8"


def _cases(K):  # noqa: N803 - the kernels module
    tree_warps = 1
    return [
        (K.select_kernel, dict(
            children_index_ptr=P32, children_prior_ptr=PF, visit_count_ptr=P32, value_sum_ptr=PF,
            terminal_ptr=PU8, parent_ptr=P32, vvisit_ptr=P32, out_node_ptr=P32, out_action_ptr=P32,
            params_ptr=PF64, N="i32", A="i32", K="i32"),
         [dict(IS_UCT=u, BLOCK_A=a, BLOCK_J=16) for u in (False, True) for a in (2, 8)], tree_warps),
        (K.expand_kernel, dict(
            parent_ptr=P32, action_ptr=P32, depth_ptr=P32, children_index_ptr=P32,
            children_prior_ptr=PF, visit_count_ptr=P32, value_sum_ptr=PF, terminal_ptr=PU8,
            num_nodes_ptr=P32, leaf_node_ptr=P32, leaf_action_ptr=P32, child_prior_ptr=PF,
            new_terminal_ptr=PU8, out_ptr=P32, overflow_ptr=P32, N="i32", A="i32", K="i32"),
         [dict(HAS_TERMINAL=t, BLOCK_A=8) for t in (False, True)], tree_warps),
        (K.backup_kernel, dict(
            parent_ptr=P32, visit_count_ptr=P32, value_sum_ptr=PF, step_score_ptr=PF,
            path_min_ptr=PF, path_sum_ptr=PF, path_sum_log_ptr=PF, path_last_ptr=PF,
            path_len_ptr=P32, nodes_ptr=P32, values_ptr=PF, scores_ptr=PF, discount="fp32",
            N="i32", K="i32"),
         [dict(HAS_SCORES=s) for s in (False, True)], tree_warps),
        (K.topk_kernel, dict(
            scores_ptr=PF, valid_ptr=PU8, out_v_ptr=PF, out_i_ptr=P32, M="i32", KOUT="i32"),
         [dict(HAS_VALID=v, BLOCK=64) for v in (False, True)], 4),
        (K.segment_reduce_kernel, dict(values_ptr=PF, offsets_ptr=P64, out_ptr=PF),
         [dict(OP=op, BLOCK=64) for op in range(6)], 4),
        (K.group_normalize_kernel, dict(x_ptr=PF, offsets_ptr=P64, out_ptr=PF, eps="fp32"),
         [dict(UNBIASED=u, BLOCK=64) for u in (False, True)], 4),
    ]


def compile_all(backend: str = "cuda", arch: int = 90, warp_size: int = 32) -> list[str]:
    """Compile every kernel variant; returns one line per variant (raises on the first failure)."""
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        raise RuntimeError("compile_check needs TRITON_INTERPRET unset (the kernels must be JIT functions)")
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from lrm_engine.ops.triton import kernels as K

    target = GPUTarget(backend, arch, warp_size)
    done = []
    for fn, sig, variants, warps in _cases(K):
        for consts in variants:
            signature = dict(sig)
            signature.update({name: "constexpr" for name in consts})
            src = ASTSource(
                fn, signature, constexprs={(fn.arg_names.index(n),): v for n, v in consts.items()}
            )
            triton.compile(src, target=target, options=dict(num_warps=warps))
            done.append(f"{fn.__name__} {consts}: ok")
    return done


if __name__ == "__main__":  # pragma: no cover
    be = sys.argv[1] if len(sys.argv) > 1 else "cuda"
    arch = int(sys.argv[2]) if len(sys.argv) > 2 else 90
    for line in compile_all(be, arch):
        print(line)
