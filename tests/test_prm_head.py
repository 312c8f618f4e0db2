"""PRM head op (lrm_engine/ops/prm_head.py): every backend against the reference, and the fused
C-row scores against the full-vocabulary path of a tiny random Llama.

Triton runs under the interpreter on a machine without a GPU (TRITON_INTERPRET=1, set by
tests/conftest.py before any kernel is defined); sizes stay small.
"""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from lrm_engine.ops import prm_head as PH  # noqa: E402
from lrm_engine.ops.dispatch import BackendUnavailableError  # noqa: E402

AVAILABLE = PH.available_prm_head_backends()
HAS_CPP = "cpp" in AVAILABLE
HAS_TRITON = "triton" in AVAILABLE
TRITON_DEV = "cuda" if torch.cuda.is_available() else "cpu"

needs_cpp = pytest.mark.skipif(
    not HAS_CPP, reason=f"C++ PRM head kernel not built: {PH._ERRORS.get('cpp')}"
)
needs_triton = pytest.mark.skipif(
    not HAS_TRITON, reason=f"Triton PRM head kernel cannot run: {PH._ERRORS.get('triton')}"
)


def make_inputs(T, d, P, C, with_bias, seed, dtype=torch.float32, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    hidden = (torch.randn(T, d, generator=g) * 2).to(dtype)
    positions = torch.randint(0, T, (P,), generator=g)
    weight = (torch.randn(C, d, generator=g) / max(d, 1) ** 0.5 * 3).to(dtype)
    bias = torch.randn(C, generator=g) if with_bias else None
    mv = lambda t: t.to(device) if t is not None else None  # noqa: E731
    return mv(hidden), mv(positions), mv(weight), mv(bias)


sizes = st.tuples(
    st.integers(1, 37),  # T
    st.integers(1, 70),  # d
    st.integers(0, 19),  # P
    st.sampled_from([2, 3, 5]),  # C
    st.booleans(),  # bias
    st.integers(0, 2**31 - 1),  # seed
)


# --------------------------------------------------------------------------------- reference
def test_reference_is_softmax_of_gathered_logits():
    h, pos, w, b = make_inputs(11, 13, 7, 3, True, 0)
    want = torch.softmax(torch.stack([h[p] for p in pos.tolist()]) @ w.T + b, dim=-1)
    got = PH.prm_head_scores(h, pos, w, b, backend="reference")
    assert got.dtype == torch.float32 and got.shape == (7, 3)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(got.sum(-1), torch.ones(7))


# --------------------------------------------------------------------------------- cpp
@needs_cpp
@settings(max_examples=60, deadline=None)
@given(sizes)
def test_cpp_matches_reference(s):
    T, d, P, C, with_bias, seed = s
    h, pos, w, b = make_inputs(T, d, P, C, with_bias, seed)
    ref = PH.prm_head_scores(h, pos, w, b, backend="reference")
    got = PH.prm_head_scores(h, pos, w, b, backend="cpp")
    assert got.shape == (P, C) and got.dtype == torch.float32
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)


@needs_cpp
def test_cpp_strided_and_half_inputs():
    g = torch.Generator().manual_seed(1)
    base = torch.randn(40, 100, generator=g)
    h = base[:, 3:60]  # rows 100 floats apart, not contiguous
    pos = torch.tensor([0, 39, 5, 5, 17], dtype=torch.int32)
    w = torch.randn(5, 57, generator=g) * 0.2
    b = torch.randn(5, generator=g)
    torch.testing.assert_close(PH.prm_head_scores(h, pos, w, b, backend="cpp"),
                               PH.prm_head_scores(h, pos, w, b, backend="reference"), rtol=1e-5, atol=1e-6)
    for dt in (torch.float16, torch.bfloat16):
        torch.testing.assert_close(
            PH.prm_head_scores(h.to(dt), pos, w.to(dt), b, backend="cpp"),
            PH.prm_head_scores(h.to(dt), pos, w.to(dt), b, backend="reference"), rtol=1e-5, atol=1e-6)


@needs_cpp
def test_auto_is_cpp_on_cpu():
    assert PH._resolve("auto", torch.device("cpu")) is PH.prm_head_scores_cpp


# --------------------------------------------------------------------------------- triton
@needs_triton
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sizes, st.sampled_from([torch.float32, torch.float16]))
def test_triton_matches_reference(s, dtype):
    T, d, P, C, with_bias, seed = s
    h, pos, w, b = make_inputs(T, d, P, C, with_bias, seed, dtype=dtype, device=TRITON_DEV)
    ref = PH.prm_head_scores(h, pos, w, b, backend="reference")
    got = PH.prm_head_scores(h, pos, w, b, backend="triton")
    assert got.shape == (P, C) and got.dtype == torch.float32
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(got, ref, **tol)


@needs_triton
def test_triton_several_blocks_and_strided():
    # more positions than one program's block, d over several chunks, a row stride > d
    g = torch.Generator().manual_seed(2)
    h = torch.randn(50, 90, generator=g)[:, :67].to(TRITON_DEV)
    pos = torch.randint(0, 50, (37,), generator=g).to(TRITON_DEV)
    w = (torch.randn(3, 67, generator=g) * 0.3).to(TRITON_DEV)
    torch.testing.assert_close(PH.prm_head_scores(h, pos, w, backend="triton"),
                               PH.prm_head_scores(h, pos, w, backend="reference"), rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------------- errors
@pytest.mark.parametrize("backend", ["reference", "cpp", "triton"])
def test_out_of_range_positions_raise(backend):
    if backend not in AVAILABLE:
        pytest.skip(f"{backend} not available")
    h, _, w, _ = make_inputs(6, 5, 0, 2, False, 0)
    for bad in ([0, 6], [-1]):
        with pytest.raises(IndexError):
            PH.prm_head_scores(h, torch.tensor(bad), w, backend=backend)


def test_bad_arguments():
    h, pos, w, b = make_inputs(6, 5, 3, 2, True, 0)
    with pytest.raises(ValueError, match=r"\[C, d\]"):
        PH.prm_head_scores(h, pos, w[:, :4])
    with pytest.raises(ValueError, match="bias"):
        PH.prm_head_scores(h, pos, w, b[:1])
    with pytest.raises(TypeError, match="integer"):
        PH.prm_head_scores(h, pos.float(), w)
    with pytest.raises(BackendUnavailableError, match="choose one of"):
        PH.prm_head_scores(h, pos, w, backend="nope")


# --------------------------------------------------------------------------------- end to end
def tiny_llama(vocab=300, seed=0):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(
        vocab_size=vocab, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        tie_word_embeddings=False,
    )
    model = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # make the head less flat than its N(0, 0.02) init
        model.lm_head.weight.mul_(25)
    return model


def step_tag_batch(vocab, tag, B=3, L=29, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(10, vocab, (B, L), generator=g)
    ids[ids == tag] = 11
    for b in range(B):  # a few step tags per row, one at the very end of row 0
        cols = torch.randperm(L - 1, generator=g)[: 2 + b] + 1
        ids[b, cols] = tag
    ids[0, -1] = tag
    return ids


@pytest.mark.parametrize("backend", ["reference", "cpp", "triton"])
def test_token_prm_equals_full_vocabulary_path(backend):
    if backend not in AVAILABLE:
        pytest.skip(f"{backend} not available")
    vocab, tag, good, bad = 300, 7, 42, 217
    model = tiny_llama(vocab)
    ids = step_tag_batch(vocab, tag)
    B, L = ids.shape
    with torch.no_grad():
        hidden = model.model(input_ids=ids).last_hidden_state  # after the final norm
        logits = model(input_ids=ids).logits  # [B, L, V]: the full-vocabulary path
    b_idx, t_idx = (ids == tag).nonzero(as_tuple=True)
    full = torch.softmax(logits[b_idx, t_idx].double(), dim=-1)[:, [good, bad]]
    want = (full / full.sum(-1, keepdim=True))[:, 0].float()

    flat = hidden.reshape(B * L, -1)
    positions = b_idx * L + t_idx
    if backend == "triton":
        flat, positions = flat.to(TRITON_DEV), positions.to(TRITON_DEV)
    got = PH.token_prm_scores(flat, positions, model.lm_head.weight.to(flat.device), good, bad,
                              backend=backend).cpu()
    assert got.shape == (len(b_idx),)
    assert want.min() < 0.97 and want.max() > 0.03  # not saturated: the check means something
    torch.testing.assert_close(got, want, rtol=1e-5, atol=2e-6)


@pytest.mark.parametrize("backend", ["reference", "cpp"])
def test_two_class_head_prm(backend):
    if backend not in AVAILABLE:
        pytest.skip(f"{backend} not available")
    model = tiny_llama()
    ids = step_tag_batch(300, 7, seed=1)
    B, L = ids.shape
    torch.manual_seed(3)
    score = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 2))
    with torch.no_grad():
        hidden = model.model(input_ids=ids).last_hidden_state
        full = torch.softmax(score(hidden), dim=-1)[..., 1]  # Qwen2.5-Math-PRM: P(class 1)
        b_idx, t_idx = (ids == 7).nonzero(as_tuple=True)
        want = full[b_idx, t_idx]
        got = PH.two_class_prm_scores(hidden.reshape(B * L, -1), b_idx * L + t_idx, score[2].weight,
                                      score[2].bias, pre=score[:2], backend=backend)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


@needs_cpp
def test_cpp_column_strided_hidden():
    g = torch.Generator().manual_seed(4)
    h = torch.randn(23, 31, generator=g).t()  # [31, 23], column stride 31
    pos = torch.tensor([30, 0, 7])
    w = torch.randn(2, 23, generator=g)
    torch.testing.assert_close(PH.prm_head_scores(h, pos, w, backend="cpp"),
                               PH.prm_head_scores(h, pos, w, backend="reference"), rtol=1e-5, atol=1e-6)
