"""A character-level tokenizer for the embedded arithmetic task, in Hugging Face format.

Every character is one token, so the step delimiter (``"\\n"`` by default) is always exactly one
token: generation can stop on it and training masks can be cut at it without any BPE merge
straddling a step boundary. The vocabulary is fixed and independent of the data:

- ids 0-3: the special tokens ``<pad>``, ``<bos>``, ``<eos>``, ``<unk>``;
- then ``"\\n"``, ``"\\t"`` and the printable ASCII characters (space to ``~``), in code-point
  order — digits, operators, parentheses, ``=`` and the letters of ``"Answer: "`` included;
- any ``extra_chars`` asked for (e.g. a non-ASCII delimiter), appended in the order given.

Any other character encodes to ``<unk>``. Encoding with ``add_special_tokens=True`` (the
Hugging Face default) prepends ``<bos>``; ``<eos>`` is never added automatically — training data
appends it after a completion (see :mod:`lrm_engine.train.data`). Decoding concatenates the
characters back (no spaces inserted), so ``decode(encode(s, add_special_tokens=False)) == s``
for every string over the vocabulary.

The tokenizer is built with the ``tokenizers`` library (WordLevel model over single characters)
and wrapped as :class:`transformers.PreTrainedTokenizerFast`; ``save_pretrained`` /
``AutoTokenizer.from_pretrained`` round-trip it, offline.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIAL_TOKENS: tuple[str, ...] = (PAD, BOS, EOS, UNK)
# The base character set: newline, tab, printable ASCII.
BASE_CHARS: tuple[str, ...] = ("\n", "\t") + tuple(chr(c) for c in range(32, 127))


def char_vocab(extra_chars: Iterable[str] = ()) -> dict[str, int]:
    """The token -> id map: specials, then the base characters, then ``extra_chars``."""
    vocab: dict[str, int] = {}
    for t in SPECIAL_TOKENS + BASE_CHARS:
        vocab.setdefault(t, len(vocab))
    for s in extra_chars:
        for ch in s:  # a multi-character string contributes each of its characters
            vocab.setdefault(ch, len(vocab))
    return vocab


def build_char_tokenizer(extra_chars: Iterable[str] = (), model_max_length: int = 1024):
    """A character-level :class:`~transformers.PreTrainedTokenizerFast` (see module docstring)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = char_vocab(extra_chars)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    # Every character (newline included) is its own pre-token.
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, vocab[BOS])]
    )
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        padding_side="right",
        model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,
    )


def save_tokenizer(tokenizer, path: str | Path) -> Path:
    """Save in Hugging Face format (tokenizer.json + tokenizer_config.json ...)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(path))
    return path


def load_tokenizer(path: str | Path):
    """Load a tokenizer saved by :func:`save_tokenizer` (or any HF fast tokenizer), offline."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast.from_pretrained(str(path), local_files_only=True)


def single_token_id(tokenizer, text: str) -> int:
    """The id of ``text`` if it encodes to exactly one token; ValueError otherwise.

    Use it for the step delimiter: generation stop ids and step masks rely on it being one
    token.
    """
    ids = tokenizer.encode(text, add_special_tokens=False)
    if len(ids) != 1:
        raise ValueError(f"{text!r} encodes to {len(ids)} tokens {ids}, not one")
    if ids[0] == tokenizer.unk_token_id:
        raise ValueError(f"{text!r} is not in the vocabulary (encodes to <unk>)")
    return ids[0]
