"""Built-in reward plugin: incremental PRMs (lrm_engine.rewards) — ``prm_token``
(Math-Shepherd good/bad token logits), ``prm_head`` (two-class head), ``value_head`` (sigmoid
head). Each scores only the new step's tokens on its own cached per-node PRM KV.

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


@hookimpl
def lrm_register_reward_models(registry):
    from lrm_engine.rewards.factories import make_prm_head, make_prm_token, make_value_head

    registry.register("prm_token", make_prm_token,
                      description="token-logit PRM (Math-Shepherd), incremental on cached PRM KV")
    registry.register("prm_head", make_prm_head,
                      description="two-class head PRM (Qwen2.5-Math-PRM style), incremental")
    registry.register("value_head", make_value_head,
                      description="sigmoid value head on each step, incremental")


@hookimpl
def lrm_register_configs(config_store):
    for name, node in (("prm_token", PRMTokenSchema), ("prm_head", PRMHeadSchema),
                       ("value_head", ValueHeadSchema)):
        config_store.store(group="schema/reward", name=name, node=node)
