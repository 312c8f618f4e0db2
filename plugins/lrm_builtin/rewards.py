"""Built-in reward plugin: incremental PRMs (lrm_engine.rewards) — ``prm_token``
(Math-Shepherd good/bad token logits), ``prm_head`` (two-class head), ``value_head`` (sigmoid
head). Each scores only the new step's tokens on its own cached per-node PRM KV.
Also ``orm`` (the head at the end of finished solutions only), ``verifier`` (reference grading;
refused inside search), ``judge`` (LLM verdict per step) and ``pairwise`` (A/B preference, Enhanced
Borda Count). Every step reward is aggregated along a path by ``search_run.aggregation``.

``path: null`` means the embedded default PRM trained by ``lrm run``, loaded at first use.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from lrm_engine.config import RewardConfig
from lrm_engine.hookspecs import hookimpl


@dataclass
class _PRMCommon(RewardConfig):
    # Local model directory; null = the embedded default PRM trained by `lrm run`
    # ($LRM_DEFAULT_PRM, else $LRM_CACHE/default/prm), loaded at first use.
    path: Optional[str] = None
    # Model dtype: float32, bfloat16 or float16.
    dtype: str = "float32"
    # Byte budget of the PRM's own per-node KV store, in MiB (LRU, transparent recompute).
    kv_budget_mb: float = 256.0
    # Text ending each step in the PRM's input, read at its last token; null = the task's step
    # delimiter (prm_token: the model folder's prm_config.json first); "" = the step's last token.
    step_tag: Optional[str] = None
    # Allow model code shipped with the checkpoint (off unless you trust it).
    trust_remote_code: bool = False
    # Device of the model: cpu or cuda.
    device: str = "cpu"
    # Kernel of the PRM head op: auto, reference, cpp, triton or cuda.
    backend: str = "auto"


@dataclass
class PRMTokenSchema(_PRMCommon):
    # Registry name of the reward model.
    name: str = "prm_token"
    # GGUF file inside `path` (null: safetensors).
    gguf_file: Optional[str] = None
    # Token whose probability (against bad_token) is the step score; null = prm_config.json's,
    # else the prm objective's ("+").
    good_token: Optional[str] = None
    # The competing "bad step" token; null = prm_config.json's, else the prm objective's ("-").
    bad_token: Optional[str] = None
    # "tag": P(good) vs P(bad) at the step tag (Math-Shepherd); "likelihood": the PRM's own
    # probability of the step's least likely token; null = prm_config.json's, else "tag".
    readout: Optional[str] = None


@dataclass
class PRMHeadSchema(_PRMCommon):
    # Registry name of the reward model.
    name: str = "prm_head"
    # Which of the head's two classes means "good step".
    positive_class: int = 1


@dataclass
class ValueHeadSchema(_PRMCommon):
    # Registry name of the reward model.
    name: str = "value_head"


@dataclass
class ORMSchema(_PRMCommon):
    # Registry name of the reward model.
    name: str = "orm"
    # The head evaluated at the end of each finished solution: prm_token, prm_head or value_head
    # (an `lrm train objective=orm` folder records its own in orm_config.json; a mismatch is refused).
    head: str = "prm_token"
    # Score of non-terminal steps: null = NaN (not scored; path aggregates skip them), or a
    # number such as 0.5 (neutral, enters the aggregates).
    nonterminal: Optional[float] = None
    # GGUF file inside `path` (head=prm_token only; null: safetensors).
    gguf_file: Optional[str] = None
    # head=prm_token: the "good" token (null = prm_config.json's, else "+").
    good_token: Optional[str] = None
    # head=prm_token: the "bad" token (null = prm_config.json's, else "-").
    bad_token: Optional[str] = None
    # head=prm_head: which of the two classes means "good solution".
    positive_class: int = 1


@dataclass
class VerifierSchema(RewardConfig):
    # Registry name of the reward model (reference grading; refused inside search).
    name: str = "verifier"
    # exact (normalised text / exact numbers) or math (adds math-verify equivalence).
    mode: str = "math"
    # Prefix of the final-answer line (falls back to the last \boxed{...}).
    answer_prefix: str = "Answer: "
    # Seconds allowed for one math-verify comparison.
    timeout: float = 5.0


@dataclass
class _PromptedCommon(RewardConfig):
    # Local causal LM directory (loaded like policies); null = the embedded default policy model.
    path: Optional[str] = None
    # GGUF file inside `path` (null: safetensors).
    gguf_file: Optional[str] = None
    # Model dtype: float32, bfloat16 or float16.
    dtype: str = "float32"
    # Prompt template (null = the built-in one; see docs/rewards.md for its fields).
    template: Optional[str] = None
    # Score given when no verdict / preference can be made.
    neutral: float = 0.5
    # Longest prompt in tokens (longer prompts keep their end).
    max_prompt_tokens: int = 2048
    # Allow model code shipped with the checkpoint (off unless you trust it).
    trust_remote_code: bool = False
    # Device of the model: cpu or cuda.
    device: str = "cpu"


@dataclass
class JudgeSchema(_PromptedCommon):
    # Registry name of the reward model.
    name: str = "judge"
    # Tokens the judge may generate for its verdict (greedy).
    max_new_tokens: int = 8


@dataclass
class PairwiseSchema(_PromptedCommon):
    # Registry name of the reward model.
    name: str = "pairwise"
    # Answer token meaning "solution A is better" (one token of the judge's tokenizer).
    a_token: str = "A"
    # Answer token meaning "solution B is better".
    b_token: str = "B"
    # Ask every pair in both orders and average (cancels position bias).
    both_orders: bool = True
    # P(i > j) above this is a win in Enhanced Borda Count.
    threshold: float = 0.5
    # EBC ties (cycles): soft (re-rank by summed probabilities) or none (share the rank).
    tie_break: str = "soft"


@hookimpl
def lrm_register_reward_models(registry):
    from lrm_engine.rewards.factories import make_prm_head, make_prm_token, make_value_head

    registry.register("prm_token", make_prm_token,
                      description="token-logit PRM (Math-Shepherd), incremental on cached PRM KV")
    registry.register("prm_head", make_prm_head,
                      description="two-class head PRM (Qwen2.5-Math-PRM style), incremental")
    registry.register("value_head", make_value_head,
                      description="sigmoid value head on each step, incremental")
    from lrm_engine.rewards.family_factories import make_judge, make_orm, make_pairwise, make_verifier

    registry.register("orm", make_orm, description="outcome reward: a head at the end of finished solutions")
    registry.register("verifier", make_verifier,
                      description="reference grading (exact / math-verify); training and analysis only, not search")
    registry.register("judge", make_judge, description="LLM-as-a-judge verdict per step, parsed robustly")
    registry.register("pairwise", make_pairwise,
                      description="pairwise preference (A/B logits) with Enhanced Borda Count ranking")


@hookimpl
def lrm_register_configs(config_store):
    for name, node in (("prm_token", PRMTokenSchema), ("prm_head", PRMHeadSchema),
                       ("value_head", ValueHeadSchema)):
        config_store.store(group="schema/reward", name=name, node=node)
    for name, node in (("orm", ORMSchema), ("verifier", VerifierSchema), ("judge", JudgeSchema),
                       ("pairwise", PairwiseSchema)):
        config_store.store(group="schema/reward", name=name, node=node)
