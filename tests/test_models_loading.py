"""load_causal_lm: local safetensors directories, offline, one clear error per failure."""

from __future__ import annotations

import json

import pytest
import torch

from lrm_engine.models import ModelLoadError, char_tokenizer, load_causal_lm, save_tiny_llama, tiny_llama


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return save_tiny_llama(tmp_path_factory.mktemp("tiny"), hidden_size=32, intermediate_size=64)


def test_char_tokenizer_roundtrip():
    tok = char_tokenizer()
    text = "Step 1: 2+3=5\nAnswer: 5"
    ids = tok(text)["input_ids"]
    assert len(ids) == len(text)
    assert tok.decode(ids) == text
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)


def test_tiny_llama_sizes():
    small = tiny_llama(100)
    assert sum(p.numel() for p in small.parameters()) < 200_000
    mid = tiny_llama(100, hidden_size=256, num_layers=4, intermediate_size=688)
    n = sum(p.numel() for p in mid.parameters())
    assert 2_000_000 < n < 6_000_000
    assert not mid.training


def test_load_saved_directory(tiny_dir):
    model, tok = load_causal_lm(tiny_dir)
    assert type(model).__name__ == "LlamaForCausalLM" and not model.training
    assert model.dtype == torch.float32
    ids = tok("abc", return_tensors="pt").input_ids
    assert model(ids).logits.shape == (1, 3, len(tok))
    ref = tiny_llama(len(tok), hidden_size=32, intermediate_size=64)
    torch.testing.assert_close(model(ids).logits, ref(ids).logits)


def test_load_bf16(tiny_dir):
    model, _ = load_causal_lm(tiny_dir, dtype="bf16")
    assert model.dtype == torch.bfloat16


def test_missing_path(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_causal_lm(tmp_path / "nope")


def test_hub_id_without_local_copy(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelLoadError, match="no local copy.*huggingface-cli download"):
        load_causal_lm("someorg/some-model-that-is-not-here")


def test_unsupported_architecture(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "no_such_arch", "architectures": ["X"]}))
    with pytest.raises(ModelLoadError, match="not supported|trust_remote_code"):
        load_causal_lm(tmp_path)


def test_not_a_model_directory(tmp_path):
    (tmp_path / "w.gguf").write_bytes(b"")
    with pytest.raises(ModelLoadError, match="no config.json.*gguf_file"):
        load_causal_lm(tmp_path)
    with pytest.raises(ModelLoadError, match="not found"):
        load_causal_lm(tmp_path, gguf_file="other.gguf")


def test_unknown_dtype(tiny_dir):
    with pytest.raises(ModelLoadError, match="unknown dtype"):
        load_causal_lm(tiny_dir, dtype="float13")


def test_weights_missing(tmp_path, tiny_dir):
    (tmp_path / "config.json").write_text((tiny_dir / "config.json").read_text())
    with pytest.raises(ModelLoadError):
        load_causal_lm(tmp_path)
