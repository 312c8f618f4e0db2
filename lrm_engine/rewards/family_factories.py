"""Registry factories behind ``reward=orm | verifier | judge | pairwise``.

``path=None`` follows :mod:`lrm_engine.rewards.factories`: the model is the embedded default
(``orm``: the default PRM; ``judge`` / ``pairwise``: the default policy model, a causal LM) and
the component is a lazy handle that loads at the first call. With a path the model loads now.
"""

from __future__ import annotations

import math

from lrm_engine.default_models import resolve_model_path
from lrm_engine.rewards.factories import LazyReward, make_prm_head, make_prm_token, make_value_head

ORM_HEADS = ("prm_token", "prm_head", "value_head")


def make_orm(path: str | None = None, head: str | None = None, nonterminal: float | None = None,
             gguf_file: str | None = None, dtype: str = "float32", kv_budget_mb: float = 256.0,
             good_token: str | None = None, bad_token: str | None = None, positive_class: int = 1,
             step_tag: str | None = None, trust_remote_code: bool = False, device: str = "cpu",
             backend: str = "auto"):
    """``orm``: the ``head`` model evaluated only at the end of finished solutions.

    ``head=None``: the one recorded in the folder's ``orm_config.json`` (written by ``lrm train
    objective=orm``), else ``prm_token`` (e.g. the default PRM read at the final step only)."""
    from lrm_engine.rewards.outcome import OutcomeRM

    if head is None:
        head = orm_head(path)
    common = dict(path=path, dtype=dtype, kv_budget_mb=kv_budget_mb, step_tag=step_tag,
                  trust_remote_code=trust_remote_code, device=device, backend=backend)
    if head == "prm_token":
        inner = make_prm_token(gguf_file=gguf_file, good_token=good_token, bad_token=bad_token, **common)
    elif head == "prm_head":
        inner = make_prm_head(positive_class=positive_class, **common)
    elif head == "value_head":
        inner = make_value_head(**common)
    else:
        raise ValueError(f"reward.head must be one of {', '.join(ORM_HEADS)}, got {head!r}")
    return OutcomeRM(inner, nonterminal=math.nan if nonterminal is None else float(nonterminal))


def orm_head(path: str | None) -> str:
    """The head an ORM folder was trained with (its ``orm_config.json``), else ``prm_token``."""
    if path is None:
        return "prm_token"
    from lrm_engine.rewards.prm_token import model_read_out

    doc = model_read_out(path)
    head = doc.get("head") if doc.get("kind") == "orm" else doc.get("kind")
    return head if head in ORM_HEADS else "prm_token"


def make_verifier(mode: str = "math", answer_prefix: str = "Answer: ", timeout: float = 5.0):
    """``verifier``: reference grading for training / annotation / oracle analysis (not search)."""
    from lrm_engine.rewards.verifier import Verifier

    return Verifier(mode=mode, answer_prefix=answer_prefix, timeout=timeout)


def _lm(path, gguf_file, dtype, trust_remote_code, device, max_prompt_tokens):
    from lrm_engine.models.loading import load_causal_lm
    from lrm_engine.rewards.prompted import PromptedLM

    model, tok = load_causal_lm(path, gguf_file=gguf_file, dtype=dtype,
                                trust_remote_code=trust_remote_code, device=device)
    return PromptedLM(model, tok, max_prompt_tokens=max_prompt_tokens)


def _lazy_or_now(path, build, what: str):
    if path is None:
        return LazyReward(lambda: build(resolve_model_path(None, "policy", "reward.path")), what)
    return build(str(path))


def make_judge(path: str | None = None, gguf_file: str | None = None, dtype: str = "float32",
               max_new_tokens: int = 8, template: str | None = None, neutral: float = 0.5,
               max_prompt_tokens: int = 2048, trust_remote_code: bool = False, device: str = "cpu"):
    """``judge``: a prompted causal LM's verdict per step."""

    def build(p: str):
        from lrm_engine.rewards.judge import DEFAULT_TEMPLATE, JudgeReward

        lm = _lm(p, gguf_file, dtype, trust_remote_code, device, max_prompt_tokens)
        return JudgeReward(lambda prompts: lm.generate(prompts, max_new_tokens),
                           template=template or DEFAULT_TEMPLATE, neutral=neutral, lm=lm)

    return _lazy_or_now(path, build, "judge reward")


def make_pairwise(path: str | None = None, gguf_file: str | None = None, dtype: str = "float32",
                  a_token: str = "A", b_token: str = "B", template: str | None = None,
                  both_orders: bool = True, threshold: float = 0.5, tie_break: str = "soft",
                  neutral: float = 0.5, max_prompt_tokens: int = 2048,
                  trust_remote_code: bool = False, device: str = "cpu"):
    """``pairwise``: P(A better) from the logits of two answer tokens; EBC ranking."""

    def build(p: str):
        from lrm_engine.rewards.pairwise import DEFAULT_TEMPLATE, LMPairJudge, PairwiseReward

        lm = _lm(p, gguf_file, dtype, trust_remote_code, device, max_prompt_tokens)
        judge = LMPairJudge(lm, a_token=a_token, b_token=b_token, template=template or DEFAULT_TEMPLATE)
        return PairwiseReward(judge, both_orders=both_orders, threshold=threshold,
                              tie_break=tie_break, neutral=neutral, lm=lm)

    return _lazy_or_now(path, build, "pairwise reward")
