"""Tiny Llama-architecture decoders, trained from scratch on the CPU for the embedded default.

Plain :class:`transformers.LlamaForCausalLM` models built from a :class:`LlamaConfig`: anything
that loads a Hugging Face causal LM loads them (``save_pretrained`` writes safetensors). Sizes
(parameter counts for the 101-token character vocabulary of :mod:`lrm_engine.tokenization`,
tied input/output embeddings):

========  ======  ======  =====  ===========  ===========
name      hidden  layers  heads  intermediate  parameters
========  ======  ======  =====  ===========  ===========
micro     32      2       2      64            ~0.02 M  (tests only)
tiny      128     4       4      512           ~1.1 M
small     256     6       8      1024          ~6.3 M
========  ======  ======  =====  ===========  ===========

(:func:`count_parameters` gives the exact figure for a vocabulary.)
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TinySize:
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    num_key_value_heads: int | None = None


TINY_SIZES: dict[str, TinySize] = {
    "micro": TinySize(32, 2, 2, 64),
    "tiny": TinySize(128, 4, 4, 512),
    "small": TinySize(256, 6, 8, 1024),
}


def tiny_llama_config(
    size: str = "tiny",
    *,
    vocab_size: int,
    bos_token_id: int = 1,
    eos_token_id: int = 2,
    pad_token_id: int = 0,
    max_position_embeddings: int = 512,
    tie_word_embeddings: bool = True,
    **overrides,
):
    """A :class:`LlamaConfig` for a named size; ``overrides`` replace any config field."""
    from transformers import LlamaConfig

    if size not in TINY_SIZES:
        raise ValueError(f"unknown tiny model size {size!r}; sizes are {sorted(TINY_SIZES)}")
    s = TINY_SIZES[size]
    kw = dict(
        vocab_size=vocab_size,
        hidden_size=s.hidden_size,
        intermediate_size=s.intermediate_size,
        num_hidden_layers=s.num_hidden_layers,
        num_attention_heads=s.num_attention_heads,
        num_key_value_heads=s.num_key_value_heads or s.num_attention_heads,
        max_position_embeddings=max_position_embeddings,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        initializer_range=0.02,
        tie_word_embeddings=tie_word_embeddings,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        attention_dropout=0.0,
    )
    kw.update(overrides)
    return LlamaConfig(**kw)


def make_tiny_llama(size: str = "tiny", *, tokenizer=None, vocab_size: int | None = None,
                    seed: int = 0, **config_overrides):
    """A freshly initialised tiny :class:`LlamaForCausalLM` (fp32, seeded, in train mode).

    Give ``tokenizer`` (its vocabulary size and bos/eos/pad ids are used) or ``vocab_size``.
    The same ``seed`` gives the same weights; the global torch RNG is left as it was.
    """
    import torch
    from transformers import LlamaForCausalLM

    ids = {}
    if tokenizer is not None:
        vocab_size = len(tokenizer)
        ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                   pad_token_id=tokenizer.pad_token_id)
    if vocab_size is None:
        raise ValueError("make_tiny_llama: give tokenizer= or vocab_size=")
    ids.update(config_overrides)
    config = tiny_llama_config(size, vocab_size=vocab_size, **ids)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.train()
    return model


def count_parameters(model) -> int:
    """Number of distinct parameters (tied embeddings counted once)."""
    return sum(p.numel() for p in model.parameters())
