r"""MATH-500 (the PRM800K held-out MATH test problems): ``<path>/test.jsonl``.

Records: ``{"problem", "solution", "answer", "subject", "level", "unique_id"}``.

- reference: the ``answer`` field (LaTeX);
- gold steps: the solution split on the step delimiter (default a blank line, ``"\n\n"``);
- candidate answer: the last ``\boxed{...}`` (nested braces respected), else the text after the
  answer prefix, else "the answer is X";
- grading: exact numeric comparison when both read as numbers, else math-verify equivalence.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from lrm_engine.core.interfaces import Example, StepConvention

from .mathtext import JsonlMathTask, JsonlMathTaskConfig, MathStepConvention, make_problem

MATH_TEMPLATE = "Problem: {question}\nSolution:\n"
MATH_SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."


@dataclass
class Math500TaskConfig(JsonlMathTaskConfig):
    # Registry name of the task.
    name: str = "math500"
    # Folder holding test.jsonl; null = $LRM_DATA/math500, else the nearest
    # shared/data/math500 found upward from the current directory.
    path: Optional[str] = None
    # Use only the first N examples (null = all).
    limit: Optional[int] = None
    # Prompt text; {question} is replaced by the problem.
    prompt_template: str = MATH_TEMPLATE
    # System message of the chat style ("" = none).
    system_prompt: str = MATH_SYSTEM
    # The string that ends one reasoning step (a blank line, as in ProcessBench / Qwen PRMs).
    delimiter: str = "\n\n"
    # The prefix of a final-answer line, used when the solution has no \boxed{}.
    answer_prefix: str = "Answer: "


class Math500Task(JsonlMathTask):
    name = "math500"
    folder = "math500"
    splits = ("test",)
    required_fields = ("problem", "solution", "answer")
    schema = Math500TaskConfig

    def _make_step(self, delimiter: str, answer_prefix: str) -> StepConvention:
        return MathStepConvention(delimiter=delimiter, answer_prefix=answer_prefix, boxed_first=True)

    def _to_example(self, split: str, index: int, rec: dict[str, Any]) -> Example:
        p, s, a = rec["problem"], rec["solution"], rec["answer"]
        if not all(isinstance(x, str) for x in (p, s, a)):
            raise TypeError("problem, solution and answer must be strings")
        pid = rec.get("unique_id") or f"math500-{index}"
        meta = {k: rec[k] for k in ("subject", "level", "unique_id") if k in rec}
        return Example(
            problem=make_problem(str(pid), p, **meta),
            reference=a.strip(),
            solution_steps=tuple(self.step.split_steps(s)),
        )
