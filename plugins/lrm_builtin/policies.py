"""Built-in policy plugin: ``hf`` (any transformers causal LM, batched step expansion on the
tree's KV store; lrm_engine.models.hf_policy.HFPolicy).

``path: null`` means the embedded default policy trained by ``lrm run``: the policy is then a
lazy handle that resolves the path and loads the model at first use (composing and building the
config needs no model). The sampling options become the search's default ``SamplingConfig``
(``policy.sampling``); the task's step convention is given to the policy by the verb
(``policy.configure(step=task.step)``) before the first expansion.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from lrm_engine.config import PolicyConfig
from lrm_engine.default_models import LazyHandle, resolve_model_path
from lrm_engine.hookspecs import hookimpl


@dataclass
class SamplingSchema:
    # Softmax temperature (> 0) of step sampling.
    temperature: float = 1.0
    # Nucleus sampling: keep the smallest set of tokens with this much probability (1 = off).
    top_p: float = 1.0
    # Keep only the k most likely tokens (0 = off).
    top_k: int = 0
    # Seed of the sampler (mixed with each expand call's ordinal: re-runs are reproducible).
    seed: int = 0


@dataclass
class HFPolicySchema(PolicyConfig):
    # Registry name of the policy.
    name: str = "hf"
    # Local model directory (safetensors or GGUF); null = the embedded default policy trained by
    # `lrm run` ($LRM_DEFAULT_POLICY, else $LRM_CACHE/default/policy), loaded at first use.
    path: Optional[str] = None
    # GGUF file inside `path` (null: safetensors).
    gguf_file: Optional[str] = None
    # Model dtype: float32, bfloat16 or float16.
    dtype: str = "float32"
    # Byte budget of the policy's per-node KV store, in MiB (LRU eviction, transparent recompute).
    kv_budget_mb: float = 512.0
    # A step ends at the task's delimiter, at EOS, or after this many tokens.
    max_step_tokens: int = 64
    # Children's action priors: softmax of their sequence log-likelihoods, or uniform.
    prior: str = "softmax"
    # Allow model code shipped with the checkpoint (off unless you trust it).
    trust_remote_code: bool = False
    # Also read pickle weights (pytorch_model.bin) when the folder has no safetensors; unpickling
    # can run code, so off unless you trust the file.
    allow_pickle: bool = False
    # Device of the model: cpu or cuda.
    device: str = "cpu"
    # Sampling of child steps (the search's default; greedy search overrides it).
    sampling: SamplingSchema = field(default_factory=SamplingSchema)


class LazyPolicy(LazyHandle):
    """The ``hf`` policy as built from the config: loads on first use, then forwards to it."""

    def init_roots(self, tree, prompts, *a, **kw):
        return self.resolve().init_roots(tree, prompts, *a, **kw)

    def expand(self, tree, nodes, k, sampling=None):
        return self.resolve().expand(tree, nodes, k, sampling)

    def text(self, tree, b, n, with_prompt=False):
        return self.resolve().text(tree, b, n, with_prompt)

    def release(self, tree):
        if self.loaded:
            self.resolve().release(tree)


def make_hf_policy(path=None, gguf_file=None, dtype="float32", kv_budget_mb=512.0, max_step_tokens=64,
                   prior="softmax", trust_remote_code=False, device="cpu", sampling=None,
                   allow_pickle=False, _cls: str = "HFPolicy", **extra):
    """Factory of ``policy=hf``: a :class:`LazyPolicy` over ``HFPolicy.from_config``."""
    from lrm_engine.models.loading import check_device, pickle_weights_allowed
    from lrm_engine.models.sampling import SamplingConfig

    samp = SamplingConfig(**(sampling or {}))
    if prior not in ("softmax", "uniform"):
        raise ValueError(f"policy.prior must be 'softmax' or 'uniform', got {prior!r}")
    check_device(device, "policy.device")  # at build time, even when the model loads later

    def load():
        if _cls == "TreePolicy":
            from lrm_engine.models.tree_policy import TreePolicy as cls
        else:
            from lrm_engine.models.hf_policy import HFPolicy as cls

        p = resolve_model_path(path, "policy", "policy.path")
        with pickle_weights_allowed(allow_pickle):
            return cls.from_config(p, gguf_file=gguf_file, dtype=dtype, kv_budget_mb=kv_budget_mb,
                                   max_step_tokens=max_step_tokens, trust_remote_code=trust_remote_code,
                                   device=device, prior=prior)

    handle = LazyPolicy(load, "hf policy")
    handle.__dict__["sampling"] = samp  # the search's default sampling (not forwarded)
    if path is not None:
        handle.resolve()  # a given path loads now: a wrong one fails at build time
    return handle


@dataclass
class TreePolicySchema(HFPolicySchema):
    # Registry name of the policy.
    name: str = "tree"
    # Tree-attention kernel: auto (cpp on CPU, triton on CUDA), reference, cpp or triton.
    attn_backend: str = "auto"
    # Long KV segments are split into chunks of at most this many tokens in the attention plan.
    chunk_size: int = 512


def make_tree_policy(attn_backend: str = "auto", chunk_size: int = 512, **kw):
    """Factory of ``policy=tree``: the engine's own forward (tree attention over node segments)."""
    return make_hf_policy(_cls="TreePolicy", attn_backend=attn_backend, chunk_size=chunk_size, **kw)


@hookimpl
def lrm_register_policies(registry):
    registry.register("tree", make_tree_policy,
                      description="Llama/Qwen2/Mistral with the engine's tree attention over node KV segments")
    registry.register("hf", make_hf_policy,
                      description="transformers causal LM, batched step expansion on a per-node KV store")


@hookimpl
def lrm_register_configs(config_store):
    config_store.store(group="schema/policy", name="hf", node=HFPolicySchema)
    config_store.store(group="schema/policy", name="tree", node=TreePolicySchema)
