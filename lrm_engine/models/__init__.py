"""Models on the search tree: loading, the token arena, the bounded KV store, sampling, policies.

One concept per module:

- :mod:`.loading`      — offline loading of Hugging Face causal LMs (safetensors or GGUF), tiny
                         random Llamas and a character tokenizer for tests.
- :mod:`.token_store`  — the token arena the tree's ``token_offset`` / ``token_length`` point into.
- :mod:`.kv_store`     — per-node KV segments in a byte-bounded LRU store with pinning.
- :mod:`.counters`     — compute counters (tokens computed / reused, peak bytes, evictions).
- :mod:`.sampling`     — the sampling configuration and the seeded sampler.
- :mod:`.hf_policy`    — :class:`HFPolicy`, batched step expansion over plain transformers models.
"""

from lrm_engine.models.counters import ComputeCounters
from lrm_engine.models.kv_store import KVSegment, KVStore
from lrm_engine.models.loading import (
    ModelLoadError,
    char_tokenizer,
    load_causal_lm,
    save_tiny_llama,
    tiny_llama,
)
from lrm_engine.models.sampling import SamplingConfig
from lrm_engine.models.token_store import TokenArena

__all__ = [
    "ComputeCounters",
    "KVSegment",
    "KVStore",
    "ModelLoadError",
    "SamplingConfig",
    "TokenArena",
    "char_tokenizer",
    "load_causal_lm",
    "save_tiny_llama",
    "tiny_llama",
    "HFPolicy",
    "ExpandResult",
]


def __getattr__(name):  # lazy: hf_policy imports the ops dispatcher
    if name in ("HFPolicy", "ExpandResult"):
        from lrm_engine.models import hf_policy

        return getattr(hf_policy, name)
    raise AttributeError(name)
