"""Shared data helpers for the task plugins: where the data lives, JSON Lines reading, prompts.

Data location. A task that reads files takes a ``path`` option (the folder that holds its
files). When it is unset, the folder is ``<data root>/<task folder>``, where the data root is

1. ``$LRM_DATA`` when that environment variable is set, else
2. the first ``shared/data`` folder found walking upward from the current directory, then
   upward from this file's location (a checkout with ``shared/`` inside it, or beside it as
   ``../shared/data``, both work).

Nothing is hard-coded: a fresh clone with ``shared/`` as a sibling folder finds its data.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

from lrm_engine.errors import UserError
from lrm_engine.textlines import read_lines

log = logging.getLogger("lrm_engine.tasks")

DATA_ENV = "LRM_DATA"


class DataNotFoundError(FileNotFoundError, UserError):
    """A task's data file is missing; the message names the option to set."""


class DataError(ValueError, UserError):
    """A task's data cannot be used as it is (an unknown split, a split with no usable record,
    a file that is not JSON); the message names the file and the fix."""


def _search_roots() -> list[Path]:
    starts = [Path.cwd().resolve(), Path(__file__).resolve().parent]
    seen: list[Path] = []
    for start in starts:
        for d in (start, *start.parents):
            if d not in seen:
                seen.append(d)
    return seen


def find_data_root() -> Path | None:
    """The data root: ``$LRM_DATA`` if set, else the nearest ``shared/data`` upward; or None."""
    env = os.environ.get(DATA_ENV)
    if env:
        return Path(env).expanduser()
    for d in _search_roots():
        cand = d / "shared" / "data"
        if cand.is_dir():
            return cand
    return None


def resolve_task_dir(path: str | None, folder: str) -> Path:
    """The folder holding a task's files: ``path`` if given, else ``<data root>/<folder>``."""
    if path:
        return Path(path).expanduser()
    root = find_data_root()
    if root is None:
        # Point at the first place we would have looked, so the error names a real location.
        return Path.cwd() / "shared" / "data" / folder
    return root / folder


def require_file(file: Path, *, task: str, folder: str) -> Path:
    """Return ``file`` if it exists, else fail with one message that says how to point at it."""
    if file.is_file():
        return file
    raise DataNotFoundError(
        f"{task}: data file not found: {file}. Set task.path=<folder holding {file.name}> "
        f"(or the environment variable {DATA_ENV}=<data root holding {folder}/>)."
    )


@dataclass
class JsonlStats:
    """What a JSON Lines read skipped: counted, and each one logged with file and line."""

    # Number of malformed (unparseable or non-object) lines skipped so far.
    skipped_lines: int = 0
    # (file, line number, reason) for every skipped line.
    skipped: list[tuple[str, int, str]] = field(default_factory=list)


def skip_line(stats: JsonlStats | None, file, lineno: int, reason, what: str = "line") -> None:
    """Report a skipped malformed line: a warning ``file:line: skipped malformed <what>: reason``,
    and a count (with the reason) in ``stats``."""
    log.warning("%s:%d: skipped malformed %s: %s", file, lineno, what, reason)
    if stats is not None:
        stats.skipped_lines += 1
        stats.skipped.append((str(file), lineno, str(reason)))


def read_jsonl(
    file: Path, stats: JsonlStats | None = None, required: Sequence[str] = ()
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, record)`` for every well-formed line of a JSON Lines file.

    A malformed line (not UTF-8 text, not JSON, not an object, or lacking a ``required`` key)
    is logged as a warning naming the file and the 1-based line number, counted in ``stats``,
    and skipped. Blank lines are ignored (not counted).
    """
    for lineno, line, reason in read_lines(file):
        if line is not None and not line.strip():
            continue
        if line is not None:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                reason = f"invalid JSON ({e.msg} at column {e.colno})"
            else:
                if not isinstance(rec, dict):
                    reason = f"expected a JSON object, got {type(rec).__name__}"
                else:
                    missing = [k for k in required if k not in rec]
                    if missing:
                        reason = f"missing field(s) {', '.join(missing)}"
        if reason is not None:
            skip_line(stats, file, lineno, reason)
            continue
        yield lineno, rec


# --------------------------------------------------------------------------- prompts

# ChatML, the template of Qwen2.5(-Math) and many open models. Used to render a chat prompt to
# text when no tokenizer chat template is at hand; ``messages()`` gives the raw messages so a
# caller holding a tokenizer can use ``tokenizer.apply_chat_template`` instead.
CHATML_TURN = "<|im_start|>{role}\n{content}<|im_end|>\n"
CHATML_GENERATION = "<|im_start|>assistant\n"


def render_chatml(messages: Sequence[dict[str, str]]) -> str:
    """Render chat messages as ChatML text ending with the assistant's open turn."""
    return "".join(CHATML_TURN.format(**m) for m in messages) + CHATML_GENERATION


class PromptMixin:
    """Plain and chat prompt templates shared by the text tasks.

    ``prompt_style="plain"``: ``prompt_template.format(question=...)``.
    ``prompt_style="chat"``: messages ``[system (if any), user=prompt_template filled]``
    rendered as ChatML text by :meth:`prompt`; :meth:`messages` returns the list itself.
    """

    prompt_style: str
    prompt_template: str
    system_prompt: str

    def _check_prompt_style(self) -> None:
        if self.prompt_style not in ("plain", "chat"):
            raise ValueError(
                f"{self.name}: prompt_style must be 'plain' or 'chat', got {self.prompt_style!r}"
            )

    def messages(self, problem) -> list[dict[str, str]]:
        msgs = []
        if self.system_prompt:
            msgs.append({"role": "system", "content": self.system_prompt})
        msgs.append({"role": "user", "content": self.prompt_template.format(question=problem.question)})
        return msgs

    def prompt(self, problem) -> str:
        if self.prompt_style == "chat":
            return render_chatml(self.messages(problem))
        return self.prompt_template.format(question=problem.question)
