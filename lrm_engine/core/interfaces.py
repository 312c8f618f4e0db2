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


@runtime_checkable
class Policy(Protocol):
    """Generates reasoning steps into a BatchedTree (see lrm_engine/models/hf_policy.py)."""

    def init_roots(self, tree: Any, prompts: Sequence[Any]) -> Any:
        """Encode one prompt per tree as its root (token span + prefix KV computed once)."""
        ...

    def expand(self, tree: Any, nodes: Any, k: int, sampling: Any = None) -> Any:
        """Generate k child steps under each node ([B, M] slots, -1 = none), one batched call.

        Writes the children into the tree (slots, token spans, terminal flags, priors) and
        returns an ExpandResult (children [P, k], logprob_sum, length, finished, counters).
        """
        ...

    def text(self, tree: Any, b: int, n: int, with_prompt: bool = False) -> str:
        """The solution text from the root to node n of tree b."""
        ...

    def release(self, tree: Any) -> None:
        """Forget a finished tree's tokens and KV segments."""
        ...


@runtime_checkable
class RewardModel(Protocol):
    """Scores reasoning steps. Never sees a reference answer (it gets the tree, not Examples)."""

    def score(self, tree: Any, nodes: Any, policy: Any) -> Any:
        """Step scores [P] float32 in [0, 1] for the steps leading to nodes ([P, 2] (b, n)).

        A PRM runs only the new step's tokens, on the parent's cached PRM KV. ``policy`` gives
        access to the step tokens and text (``policy.arena(tree)``, ``policy.text``).
        """
        ...


@dataclass
class SearchResult:
    """What a search returns for one problem."""

    # The problem's id.
    id: str
    # The extracted final answer (None if the chosen solution has none).
    answer: str | None
    # The chosen solution's text (steps joined by the delimiter).
    solution: str
    # Its aggregated score (PRM aggregate, vote share, ...); NaN if the search has none.
    score: float
    # The chosen path's steps.
    steps: list[str] = field(default_factory=list)
    # Every finished candidate: {"answer", "score", "text"} (for voting and analysis).
    candidates: list[dict[str, Any]] = field(default_factory=list)
    # Compute counters: policy/PRM tokens computed and reused, etc.
    counters: dict[str, int] = field(default_factory=dict)
    # Optional tree export (nodes with step text, scores, visits, chosen flag).
    tree: dict[str, Any] | None = None


@runtime_checkable
class SearchAlgorithm(Protocol):
    """Decides what to expand; batched across problems (one policy and one PRM call per iteration)."""

    def run(self, ctx: Any, problems: Sequence[Problem]) -> list[SearchResult]:
        """Search every problem of the batch; ``ctx`` is a lrm_engine.core.engine.SearchContext."""
        ...
