"""The contracts at the borders of the engine (typing.Protocol), and the problem types.

Search and reward plugins receive :class:`Problem` objects, which carry no reference answer:
a search cannot peek at the truth by construction. Training, annotation and grading receive
:class:`Example` objects (a problem plus its reference).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Protocol, Sequence, runtime_checkable


@dataclass(frozen=True)
class Problem:
    """A question as search and reward plugins see it. It has no reference answer on purpose."""

    # Stable identifier, unique within a task split (used to resume and to join results).
    id: str
    # The question in plain text.
    question: str
    # Task-specific extras that are safe to show a searcher (never the answer).
    meta: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Example:
    """A problem with its reference: for training, annotation, grading and oracle analysis."""

    problem: Problem
    # The reference final answer, as text.
    reference: str
    # A gold step-by-step solution when the task has one (one string per step), else empty.
    solution_steps: tuple[str, ...] = ()


@dataclass(frozen=True)
class StepConvention:
    """One place that maps text to steps and steps to text.

    Generation stop strings, PRM step tags, annotation labels and training masks all derive
    from it, so they cannot drift apart.
    """

    # The string that ends one reasoning step (generation stops on it).
    delimiter: str = "\n"
    # The prefix of the final-answer line, e.g. "Answer: ".
    answer_prefix: str = "Answer: "

    def split_steps(self, text: str) -> list[str]:
        """Split a solution into its steps (empty chunks dropped, delimiter not included)."""
        return [s for s in text.split(self.delimiter) if s.strip()]

    def join_steps(self, steps: Sequence[str]) -> str:
        """Join steps into solution text; every step is followed by the delimiter."""
        return "".join(s + self.delimiter for s in steps)

    def extract_answer(self, text: str) -> str | None:
        """The text after the last answer prefix, up to the delimiter; None if there is none."""
        i = text.rfind(self.answer_prefix)
        if i < 0:
            return None
        rest = text[i + len(self.answer_prefix):]
        return rest.split(self.delimiter, 1)[0].strip() or None


@runtime_checkable
class Task(Protocol):
    """A source of problems with a prompt format, a step convention and a grader."""

    name: str
    step: StepConvention

    def examples(self, split: str) -> Iterator[Example]:
        """Yield the examples of a split ("train", "test", ...)."""
        ...

    def prompt(self, problem: Problem) -> str:
        """The text the policy is conditioned on for this problem."""
        ...

    def grade(self, example: Example, solution: str) -> bool:
        """Whether a candidate solution's final answer is correct."""
        ...
