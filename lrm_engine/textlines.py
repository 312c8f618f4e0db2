"""Reading a text file line by line, where one undecodable line does not stop the reading.

Every JSON Lines reader of the engine and its plugins (task splits, PRM / preference / SFT data,
annotation input files, ProcessBench predictions) reads through :func:`read_lines`: a line that
is not UTF-8 text (a binary blob, a Latin-1 line) comes back as a reason instead of text, so the
reader skips it, counts it and reports it as ``file:line: reason`` like a malformed JSON line.
"""

from __future__ import annotations

import os
from typing import Iterator

_BOM = "\ufeff"


def read_lines(path: str | os.PathLike[str]) -> Iterator[tuple[int, str | None, str | None]]:
    """``(line number, text, None)`` per line (1-based, the newline kept), or
    ``(line number, None, reason)`` for a line that is not UTF-8. A UTF-8 byte-order mark at the
    start of the file is dropped."""
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield lineno, None, (f"not UTF-8 text (byte 0x{raw[e.start]:02x} at column "
                                     f"{e.start + 1})")
                continue
            if lineno == 1 and text.startswith(_BOM):
                text = text[len(_BOM):]
            yield lineno, text, None
