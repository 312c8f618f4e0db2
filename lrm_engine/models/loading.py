"""Offline loading of Hugging Face causal LMs, and tiny random Llamas for tests.

``load_causal_lm`` reads a *local* directory (safetensors, or a GGUF file inside it via
``gguf_file``) with ``local_files_only=True``; a hub id resolves only if the Hugging Face cache
already holds it. Every failure raises :class:`ModelLoadError` with one line that names the fix:
a path that is a file, a config.json that is not JSON, a safetensors file whose header does not
read, a device that is not there.

Weights are read from safetensors only. Pickle checkpoints (``pytorch_model.bin``, ``*.pt``)
can run code when they are loaded, so a folder holding only those is refused unless the
caller opts in: ``allow_pickle=True`` (the policy's ``policy.allow_pickle`` option), or
:func:`pickle_weights_allowed` around the load.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from contextvars import ContextVar
from pathlib import Path
from typing import Iterator

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


# Weight files that unpickle when loaded (refused without allow_pickle).
PICKLE_WEIGHTS: tuple[str, ...] = ("pytorch_model*.bin", "*.pt", "*.pth", "*.ckpt")

# The allow_pickle default of load_causal_lm calls made inside pickle_weights_allowed(...).
_ALLOW_PICKLE: ContextVar[bool] = ContextVar("lrm_allow_pickle", default=False)


class ModelLoadError(RuntimeError):
    """A model could not be loaded; the message says why and what to do."""


@contextlib.contextmanager
def pickle_weights_allowed(allow: bool = True) -> Iterator[None]:
    """Within the block, ``load_causal_lm`` (called with ``allow_pickle=None``) may read pickle
    weights when ``allow`` is true (for loaders that do not pass the option through)."""
    token = _ALLOW_PICKLE.set(bool(allow))
    try:
        yield
    finally:
        _ALLOW_PICKLE.reset(token)


def check_device(device, what: str = "device") -> None:
    """ModelLoadError when ``device`` asks for CUDA and torch has none."""
    d = str(device)
    if d.startswith("cuda") and not torch.cuda.is_available():
        why = "this torch build has no CUDA support" if torch.version.cuda is None else "no CUDA device is visible"
        raise ModelLoadError(f"{what}={d}: CUDA is not available ({why}); use {what}=cpu")


class _ConfigUnreadable(ModelLoadError):
    """transformers could not read the config (missing or unreadable file)."""


def check_config_json(p: Path) -> None:
    """One-line ModelLoadError when the folder's config.json is not JSON text."""
    try:
        json.loads((p / "config.json").read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        why = f"{e.msg} at line {e.lineno}" if isinstance(e, json.JSONDecodeError) else "not UTF-8 text"
        raise ModelLoadError(
            f"`{p / 'config.json'}` is not valid JSON ({why}); the folder is not a usable model "
            f"directory: save the model again (model.save_pretrained(dir))"
        ) from None


def check_weights(p: Path, allow_pickle: bool) -> None:
    """One-line ModelLoadError when the folder has no weights it may read: no safetensors (and
    pickle weights without the opt-in), or a safetensors file whose header does not read."""
    safe = sorted(p.glob("*.safetensors"))
    if not safe:
        pickles = sorted({f.name for pat in PICKLE_WEIGHTS for f in p.glob(pat)})
        if not pickles:
            raise ModelLoadError(f"`{p}` has no weights: expected *.safetensors (or a .gguf with gguf_file=...)")
        if not allow_pickle:
            raise ModelLoadError(
                f"`{p}` holds only pickle weights ({', '.join(pickles)}), which can run code when "
                f"loaded; lrm_engine reads safetensors only: convert them "
                f"(model.save_pretrained(dir, safe_serialization=True)), or, if you trust the file, "
                f"set allow_pickle=true (policy.allow_pickle=true)"
            )
        return
    from safetensors import safe_open

    for f in safe:
        try:
            with safe_open(str(f), framework="pt") as h:
                h.keys()
        except Exception as e:  # SafetensorError (bad header) or OSError
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise ModelLoadError(
                f"`{f}` is not a readable safetensors file ({first}); save the model again "
                f"(model.save_pretrained(dir))"
            ) from None


def resolve_dtype(dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return _DTYPES[str(dtype).lower()]
    except KeyError:
        raise ModelLoadError(
            f"unknown dtype {dtype!r}; use one of {', '.join(sorted(set(_DTYPES)))}"
        ) from None


def load_causal_lm(
    path,
    *,
    gguf_file: str | None = None,
    dtype="float32",
    trust_remote_code: bool = False,
    device="cpu",
    allow_pickle: bool | None = None,
):
    """(model, tokenizer) from a local directory, offline, in eval mode.

    path: a directory with config.json + *.safetensors (+ tokenizer files), a directory holding
        ``gguf_file``, or a ``.gguf`` file itself. gguf_file: the GGUF file name inside ``path``
        (or an absolute path); its weights are de-quantised to ``dtype``. allow_pickle: also read
        pickle weights (``pytorch_model.bin``) when there are no safetensors; None: the value
        set by :func:`pickle_weights_allowed` (default False).
    """
    torch_dtype = resolve_dtype(dtype)
    allow = _ALLOW_PICKLE.get() if allow_pickle is None else bool(allow_pickle)
    check_device(device)
    p = Path(os.path.expanduser(str(path)))
    if p.is_file() and p.suffix == ".gguf" and gguf_file is None:
        p, gguf_file = p.parent, p.name
    if gguf_file is not None and os.path.isabs(str(gguf_file)):
        g = Path(gguf_file)
        p, gguf_file = g.parent, g.name

    if p.is_file():
        raise ModelLoadError(
            f"model path `{path}` is a file, not a folder: pass the folder holding config.json and "
            f"*.safetensors (a .gguf file may be passed as it is)"
        )
    if not p.is_dir():
        where = str(path)
        if _HUB_ID.match(where):
            fix = (
                f"`{where}` looks like a Hugging Face hub id, and there is no local copy of it "
                f"(lrm_engine loads models offline). Download it once, e.g. "
                f"`huggingface-cli download {where} --local-dir <dir>`, and pass that directory "
                f"as the model path"
            )
            # A hub id already in the HF cache is fine.
            try:
                return _load(where, None, torch_dtype, trust_remote_code, device)
            except _ConfigUnreadable:
                raise ModelLoadError(fix) from None
            except ModelLoadError:
                raise
            except Exception:
                raise ModelLoadError(fix) from None
        raise ModelLoadError(
            f"model path `{where}` does not exist. Pass a local directory holding config.json and "
            f"*.safetensors (or a .gguf file with gguf_file=...)"
        )
    if gguf_file is not None and not (p / gguf_file).is_file():
        found = sorted(x.name for x in p.glob("*.gguf"))
        raise ModelLoadError(
            f"GGUF file `{gguf_file}` not found in `{p}`"
            + (f"; GGUF files there: {', '.join(found)}" if found else "; the directory has no .gguf file")
        )
    if gguf_file is None and not (p / "config.json").is_file():
        ggufs = sorted(x.name for x in p.glob("*.gguf"))
        hint = f" It holds GGUF files ({', '.join(ggufs)}): pass gguf_file=<one of them>." if ggufs else ""
        raise ModelLoadError(
            f"`{p}` has no config.json, so it is not a Hugging Face model directory.{hint}"
        )
    if gguf_file is None:
        check_config_json(p)
    return _load(str(p), gguf_file, torch_dtype, trust_remote_code, device, allow)


def _load(where, gguf_file, torch_dtype, trust_remote_code, device, allow_pickle=False):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    kw = dict(local_files_only=True, trust_remote_code=trust_remote_code)
    if gguf_file is not None:
        kw["gguf_file"] = gguf_file
    try:
        config = AutoConfig.from_pretrained(where, **kw)
    except ValueError as e:  # unknown model_type, or remote code refused
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "trust_remote_code" in str(e) or "custom code" in msg:
            raise ModelLoadError(
                f"`{where}` needs custom model code. If you trust it, set trust_remote_code=true "
                f"(config: policy.trust_remote_code=true)"
            ) from None
        raise ModelLoadError(
            f"`{where}`: architecture not supported by the installed transformers ({msg}). "
            f"Upgrade transformers, or set trust_remote_code=true if the model ships its own code"
        ) from None
    except ImportError as e:
        raise ModelLoadError(f"loading `{where}` needs a missing package: {e}") from None
    except OSError as e:  # unreadable or non-JSON config file
        raise _ConfigUnreadable(f"`{where}`: its config does not load ({str(e).splitlines()[0]})") from None
    if gguf_file is None and Path(where).is_dir():  # a local folder (not a cached hub id)
        check_weights(Path(where), allow_pickle)
    weights_kw = {} if gguf_file is not None or allow_pickle else {"use_safetensors": True}
    try:
        model = AutoModelForCausalLM.from_pretrained(where, config=config, dtype=torch_dtype,
                                                     **weights_kw, **kw)
    except ValueError as e:
        arch = getattr(config, "architectures", None) or [type(config).__name__]
        raise ModelLoadError(
            f"`{where}` ({', '.join(arch)}) is not a causal LM that transformers can load: "
            f"{str(e).splitlines()[0]}. Use a decoder-only (causal LM) checkpoint, or set "
            f"trust_remote_code=true if the model ships its own code"
        ) from None
    except OSError as e:
        raise ModelLoadError(
            f"`{where}` has no loadable weights ({str(e).splitlines()[0]}). Expected "
            f"*.safetensors (or a .gguf with gguf_file=...)"
        ) from None
    try:
        tok = AutoTokenizer.from_pretrained(where, **kw)
    except (OSError, ValueError, TypeError) as e:
        raise ModelLoadError(
            f"`{where}` has no usable tokenizer ({str(e).splitlines()[0]}). Save the tokenizer "
            f"next to the weights (tokenizer.save_pretrained(dir))"
        ) from None
    if tok.pad_token_id is None and tok.eos_token_id is not None:
        tok.pad_token = tok.eos_token
    model.to(device)
    model.eval()
    return model, tok


# ---------------------------------------------------------------- tiny models for tests

CHAR_SPECIALS = ("<pad>", "<s>", "</s>", "<unk>")


def char_tokenizer(chars: str | None = None):
    """A character-level tokenizer built offline (``PreTrainedTokenizerFast``).

    Ids: <pad>=0, <s>=1, </s>=2, <unk>=3, then one id per character of ``chars`` (default:
    printable ASCII and newline).
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    if chars is None:
        chars = "\n" + "".join(chr(c) for c in range(32, 127))
    vocab = {s: i for i, s in enumerate(CHAR_SPECIALS)}
    for ch in chars:
        vocab.setdefault(ch, len(vocab))
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tk.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=tk, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


def tiny_llama(
    vocab_size: int,
    *,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 128,
    max_position_embeddings: int = 1024,
    initializer_range: float = 0.02,
    seed: int = 0,
    dtype=torch.float32,
    **config_kw,
):
    """A random-init ``LlamaForCausalLM`` (GQA when num_kv_heads < num_heads), in eval mode.

    Defaults give ~0.1M parameters plus the embeddings; hidden_size=256, num_layers=4,
    intermediate_size=688 gives a few million.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=max_position_embeddings,
        initializer_range=initializer_range,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
        **config_kw,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(cfg)
    return model.to(resolve_dtype(dtype)).eval()


def save_tiny_llama(directory, *, seed: int = 0, chars: str | None = None, **llama_kw) -> Path:
    """Write a tiny random Llama (safetensors) and its character tokenizer to ``directory``."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    tok = char_tokenizer(chars)
    model = tiny_llama(len(tok), seed=seed, **llama_kw)
    model.save_pretrained(d, safe_serialization=True)
    tok.save_pretrained(d)
    return d
