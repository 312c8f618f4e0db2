"""``verifier``: outcome grading against the reference — training, annotation and oracle analysis
ONLY, never search.

:meth:`Verifier.score` takes :class:`~lrm_engine.core.interfaces.Example` objects (a problem *and*
its reference) and solution texts, and returns 1.0 / 0.0 per solution. It does not follow the
``RewardModel`` protocol on purpose: searches get :class:`~lrm_engine.core.interfaces.Problem`
objects, which carry no reference, so a verifier cannot score search nodes. Three guards make
misuse fail loudly instead of silently leaking the answer:

- ``Verifier.requires_reference = True``; :class:`~lrm_engine.core.engine.SearchContext` refuses
  such a reward at construction (so ``lrm search ... reward=verifier`` stops with
  :class:`ReferenceOnlyRewardError`, a user error naming the alternatives);
- ``score(tree, pairs, policy)`` — a search-style call (first argument not a sequence of
  Examples) — raises the same error;
- an Example list and solution list of different lengths raise ``ValueError``.

Modes: ``exact`` compares the extracted answer with the reference after whitespace
normalisation (and as exact numbers when both read as numbers: "1,000" = "1000" = "1000.0");
``math`` adds math-verify equivalence (``lrm_builtin.tasks.grading.math_equal``: "\\frac{1}{2}" =
"0.5"). ``task``: when given (an object with ``grade(example, solution)``), its grader is used
instead — the task knows its own answer format best. Answers are extracted with
``answer_prefix`` (the task's step convention, "Answer: "), falling back to the last
``\\boxed{...}``.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from lrm_engine.core.interfaces import Example, StepConvention
from lrm_engine.errors import UserError

MODES = ("exact", "math")


class ReferenceOnlyRewardError(UserError):
    """A reward that needs the reference was used where only Problems exist (inside search)."""


SEARCH_REFUSAL = (
    "reward=verifier compares answers with the reference, so it is for training, annotation and "
    "oracle analysis only and cannot be used inside search (searches see Problems, which carry "
    "no reference). Use a reward model that does not need the answer — reward=prm_token, "
    "prm_head, value_head, orm, judge or pairwise — and grade results with the task's grader "
    "(lrm search grades every record after the search) or Verifier.score(examples, solutions)"
)


class Verifier:
    """Grades solutions against references (see module doc)."""

    name = "verifier"
    # SearchContext refuses rewards with this flag (they need Example.reference).
    requires_reference = True

    def __init__(self, mode: str = "math", answer_prefix: str = "Answer: ", task: Any = None,
                 timeout: float = 5.0):
        if mode not in MODES:
            raise ValueError(f"verifier mode must be one of {MODES}, got {mode!r}")
        self.mode = mode
        self.step = StepConvention(answer_prefix=answer_prefix)
        self.task = task
        self.timeout = float(timeout)
        self.graded = 0

    def extract(self, solution: str) -> str | None:
        a = self.step.extract_answer(solution)
        if a is None:
            try:
                from lrm_builtin.tasks.grading import extract_boxed
            except ImportError:  # pragma: no cover — the builtin plugin is part of the package
                return None
            a = extract_boxed(solution)
        return a.strip() if a else None

    def equal(self, answer: str | None, reference: str) -> bool:
        if answer is None:
            return False
        a, r = " ".join(answer.split()), " ".join(str(reference).split())
        if a == r:
            return True
        try:
            from lrm_builtin.tasks.grading import as_number, math_equal
        except ImportError:  # pragma: no cover
            return False
        x, y = as_number(a), as_number(r)
        if x is not None and y is not None:
            return x == y
        if self.mode == "math":
            return bool(math_equal(a, r, timeout=self.timeout))
        return False

    def grade(self, example: Example, solution: str) -> bool:
        if self.task is not None:
            return bool(self.task.grade(example, solution))
        return self.equal(self.extract(solution), example.reference)

    def score(self, examples, solutions=None, *_rest) -> torch.Tensor:
        """[P] float32: 1.0 where solutions[i] answers examples[i] correctly, else 0.0."""
        if not isinstance(examples, Sequence) or isinstance(examples, str) or not all(
                isinstance(e, Example) for e in examples) or solutions is None or _rest:
            raise ReferenceOnlyRewardError(SEARCH_REFUSAL)
        sols = list(solutions)
        if len(sols) != len(examples):
            raise ValueError(f"verifier: {len(examples)} examples but {len(sols)} solutions")
        self.graded += len(sols)
        return torch.tensor([1.0 if self.grade(e, s) else 0.0 for e, s in zip(examples, sols)],
                            dtype=torch.float32)


def refuse_reference_rewards(reward) -> None:
    """Raise ReferenceOnlyRewardError if ``reward`` needs references (called by SearchContext)."""
    if reward is not None and bool(getattr(type(reward), "requires_reference", False)):
        raise ReferenceOnlyRewardError(SEARCH_REFUSAL)
