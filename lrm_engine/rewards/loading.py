"""Loading reward models from a local directory (offline), and the embedded default's path.

- ``prm_token``: a causal LM (``lrm_engine.models.load_causal_lm``: safetensors or GGUF).
- ``prm_head`` / ``value_head``: a token-classification model (``AutoModelForTokenClassification``,
  e.g. ``LlamaForTokenClassification`` with ``num_labels`` 2 or 1), read with the same offline
  rules and errors as the policy (:class:`~lrm_engine.models.loading.ModelLoadError`).
"""

from __future__ import annotations

import os
from pathlib import Path

from lrm_engine.default_models import resolve_model_path
from lrm_engine.models.loading import ModelLoadError, load_causal_lm, resolve_dtype

__all__ = ["ModelLoadError", "load_causal_lm", "load_token_classifier", "resolve_model_path"]


def load_token_classifier(path, *, dtype="float32", trust_remote_code: bool = False, device="cpu"):
    """(model, tokenizer) of a local token-classification checkpoint, offline, in eval mode."""
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    p = Path(os.path.expanduser(str(path)))
    if not p.is_dir():
        raise ModelLoadError(
            f"reward model path `{path}` does not exist. Pass a local directory holding "
            f"config.json, *.safetensors and the tokenizer"
        )
    if not (p / "config.json").is_file():
        raise ModelLoadError(f"`{p}` has no config.json, so it is not a Hugging Face model directory")
    kw = dict(local_files_only=True, trust_remote_code=trust_remote_code)
    try:
        model = AutoModelForTokenClassification.from_pretrained(str(p), dtype=resolve_dtype(dtype), **kw)
    except ValueError as e:
        raise ModelLoadError(
            f"`{p}` is not a token-classification model transformers can load "
            f"({str(e).splitlines()[0] if str(e) else type(e).__name__}); a prm_head / value_head "
            f"reward needs e.g. LlamaForTokenClassification (num_labels 2 / 1), or set "
            f"trust_remote_code=true for a model with its own code"
        ) from None
    except OSError as e:
        raise ModelLoadError(f"`{p}` has no loadable weights ({str(e).splitlines()[0]})") from None
    try:
        tok = AutoTokenizer.from_pretrained(str(p), **kw)
    except (OSError, ValueError, TypeError) as e:
        raise ModelLoadError(f"`{p}` has no usable tokenizer ({str(e).splitlines()[0]})") from None
    if tok.pad_token_id is None and tok.eos_token_id is not None:
        tok.pad_token = tok.eos_token
    model.to(device)
    model.eval()
    return model, tok
