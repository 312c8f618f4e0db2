"""The common base of the text math tasks (GSM8K, MATH-500): JSONL splits, prompts, grading."""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

from lrm_engine.config import TaskConfig
from lrm_engine.core.interfaces import Example, Problem, StepConvention

from ._data import (DataError, JsonlStats, PromptMixin, read_jsonl, require_file, resolve_task_dir,
                    skip_line)
from .grading import DEFAULT_TIMEOUT, extract_boxed, last_number, math_equal, strip_special_tokens

_ANSWER_IS = re.compile(r"answer is[:\s]*\$?(.+?)\$?(?:\.\s*$|\n|$)", re.IGNORECASE)


@dataclass(frozen=True)
class MathStepConvention(StepConvention):
    r"""A step convention whose final answer may also be written ``\boxed{...}``.

    Extraction order: with ``boxed_first`` the last ``\boxed{}`` wins, then the answer prefix;
    without it the answer prefix wins, then ``\boxed{}``. Then "the answer is X", then (when
    ``last_number_fallback``) the last number in the text.
    """

    # Prefer \boxed{} over the answer prefix (MATH style) rather than the reverse (GSM8K).
    boxed_first: bool = False
    # As a last resort, take the last number written in the text.
    last_number_fallback: bool = False

    def _prefix_answer(self, text: str) -> str | None:
        return StepConvention.extract_answer(self, text)

    def extract_answer(self, text: str) -> str | None:
        order = (extract_boxed, self._prefix_answer)
        if not self.boxed_first:
            order = order[::-1]
        for f in order:
            a = f(text)
            if a is not None and a.strip():
                return a.strip()
        m = None
        for m in _ANSWER_IS.finditer(text):
            pass
        if m is not None and m.group(1).strip():
            return m.group(1).strip()
        if self.last_number_fallback:
            return last_number(text)
        return None


@dataclass
class JsonlMathTaskConfig(TaskConfig):
    """The options every :class:`JsonlMathTask` takes (a task's schema subclasses this and
    sets its own name and defaults)."""

    # Folder holding the split files; null = $LRM_DATA/<task folder>, else the nearest
    # shared/data/<task folder> found upward from the current directory.
    path: Optional[str] = None
    # Use only the first N examples of a split (null = all).
    limit: Optional[int] = None
    # "plain" (prompt_template filled in) or "chat" (system + user messages rendered as ChatML).
    prompt_style: str = "plain"
    # Prompt text; {question} is replaced by the problem.
    prompt_template: str = "{question}\n"
    # System message of the chat style ("" = none).
    system_prompt: str = ""
    # The string that ends one reasoning step.
    delimiter: str = "\n"
    # The prefix of the final-answer line.
    answer_prefix: str = "Answer: "
    # Seconds allowed for one math-verify comparison.
    grade_timeout: float = DEFAULT_TIMEOUT


class JsonlMathTask(PromptMixin, ABC):
    """A task whose splits are ``<path>/<split>.jsonl`` files of math word problems.

    The text options left unset (None) take the defaults of the task's config ``schema``.
    """

    name = "jsonl_math"
    folder = ""  # the task's folder under the data root
    splits: tuple[str, ...] = ("test",)
    required_fields: tuple[str, ...] = ()
    # The task's options schema: its field defaults are the defaults of the text options.
    schema: type[JsonlMathTaskConfig] = JsonlMathTaskConfig

    def __init__(
        self,
        *,
        path: str | None = None,
        limit: int | None = None,
        prompt_style: str = "plain",
        prompt_template: str | None = None,
        system_prompt: str | None = None,
        delimiter: str | None = None,
        answer_prefix: str | None = None,
        grade_timeout: float = DEFAULT_TIMEOUT,
    ):
        def pick(value, default):
            return default if value is None else value

        self.path = path
        self.limit = limit
        self.prompt_style = prompt_style
        self.prompt_template = pick(prompt_template, self.schema.prompt_template)
        self.system_prompt = pick(system_prompt, self.schema.system_prompt)
        self.grade_timeout = grade_timeout
        self.step = self._make_step(pick(delimiter, self.schema.delimiter),
                                    pick(answer_prefix, self.schema.answer_prefix))
        self._check_prompt_style()
        self._cache: dict[str, list[Example]] = {}
        self._stats: dict[str, JsonlStats] = {}

    # -- to override -------------------------------------------------------------------
    def _make_step(self, delimiter: str, answer_prefix: str) -> StepConvention:
        return MathStepConvention(delimiter=delimiter, answer_prefix=answer_prefix)

    @abstractmethod
    def _to_example(self, split: str, index: int, rec: dict[str, Any]) -> Example:
        """The task's Example for one JSONL record (line ``index`` of ``split``)."""

    # -- data ----------------------------------------------------------------------------
    @property
    def data_dir(self) -> Path:
        return resolve_task_dir(self.path, self.folder)

    def split_file(self, split: str) -> Path:
        if split not in self.splits:
            raise DataError(f"{self.name}: unknown split {split!r}; splits: {', '.join(self.splits)}")
        return require_file(self.data_dir / f"{split}.jsonl", task=self.name, folder=self.folder)

    @property
    def skipped_lines(self) -> int:
        """Malformed lines skipped over every split read so far (each logged with its line)."""
        return sum(s.skipped_lines for s in self._stats.values())

    def load(self, split: str) -> list[Example]:
        if split not in self._cache:
            file = self.split_file(split)
            stats = self._stats[split] = JsonlStats()
            out = []
            for lineno, rec in read_jsonl(file, stats, self.required_fields):
                try:
                    out.append(self._to_example(split, lineno - 1, rec))
                except (TypeError, ValueError) as e:
                    skip_line(stats, file, lineno, e, "record")
            if not out:
                raise DataError(
                    f"{self.name}: split {split!r} has no usable example in {file} "
                    f"({stats.skipped_lines} malformed lines skipped); point task.path at a folder "
                    f"whose {split}.jsonl holds {', '.join(self.required_fields) or 'records'}"
                )
            self._cache[split] = out
        data = self._cache[split]
        return data if self.limit is None else data[: self.limit]

    def examples(self, split: str = "test") -> Iterator[Example]:
        return iter(self.load(split))

    # -- grading --------------------------------------------------------------------------
    def extract_answer(self, solution: str) -> str | None:
        """The final answer, read after special-token text (``<|im_end|>``, ``</s>``) is dropped."""
        return self.step.extract_answer(strip_special_tokens(solution))

    def grade(self, example: Example, solution: str) -> bool:
        """Whether the solution's final answer is mathematically equal to the reference (never
        raises: an answer that cannot be compared is wrong, see grading.py)."""
        return math_equal(self.extract_answer(solution or ""), example.reference, self.grade_timeout)

    def gold_solution(self, example: Example) -> str:
        """The gold solution as text in this task's step convention."""
        return self.step.join_steps(example.solution_steps)


def make_problem(pid: str, question: str, **meta: Any) -> Problem:
    return Problem(id=pid, question=question, meta=meta)
