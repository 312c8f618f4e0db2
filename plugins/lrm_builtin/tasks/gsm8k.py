"""GSM8K (grade-school math word problems): ``<path>/{train,test}.jsonl``.

Records: ``{"question": str, "answer": str}``; the answer is line-by-line reasoning with
``<<expr=result>>`` calculator annotations and a last line ``#### <number>``.

- reference: the text after ``#### `` with thousands separators removed (``"1,450,000"`` →
  ``"1450000"``);
- gold steps: the reasoning lines (calculator annotations removed unless
  ``keep_calculator_annotations``), then the answer line ``#### <number>`` as the last step;
- candidate answer: the text after the last ``#### `` (the answer prefix), else the last
  ``\\boxed{}``, else "the answer is X", else the last number in the solution;
- grading: exact numeric comparison when both read as numbers, else math-verify.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Optional

from lrm_engine.core.interfaces import Example, StepConvention

from .mathtext import JsonlMathTask, JsonlMathTaskConfig, MathStepConvention, make_problem

_CALC = re.compile(r"<<[^<>]*>>")

GSM8K_TEMPLATE = "Question: {question}\nAnswer:\n"
GSM8K_SYSTEM = (
    "Solve the problem step by step, one step per line. "
    "End with a line '#### <number>' giving the final answer."
)


@dataclass
class Gsm8kTaskConfig(JsonlMathTaskConfig):
    # Registry name of the task.
    name: str = "gsm8k"
    # Folder holding train.jsonl and test.jsonl; null = $LRM_DATA/gsm8k, else the nearest
    # shared/data/gsm8k found upward from the current directory.
    path: Optional[str] = None
    # Prompt text; {question} is replaced by the problem.
    prompt_template: str = GSM8K_TEMPLATE
    # System message of the chat style ("" = none).
    system_prompt: str = GSM8K_SYSTEM
    # The prefix of the final-answer line.
    answer_prefix: str = "#### "
    # Keep the <<expr=result>> calculator annotations in the gold steps.
    keep_calculator_annotations: bool = False


def gsm8k_reference(answer: str) -> str:
    """The final answer of a GSM8K answer text: after ``####``, commas removed."""
    if "####" not in answer:
        raise ValueError("answer has no '####' final-answer line")
    return answer.rsplit("####", 1)[1].strip().replace(",", "")


class Gsm8kTask(JsonlMathTask):
    name = "gsm8k"
    folder = "gsm8k"
    splits = ("train", "test")
    required_fields = ("question", "answer")
    schema = Gsm8kTaskConfig

    def __init__(self, *, keep_calculator_annotations: bool = False, **options):
        """``options``: those of :class:`~.mathtext.JsonlMathTask`."""
        self.keep_calculator_annotations = keep_calculator_annotations
        super().__init__(**options)

    def _make_step(self, delimiter: str, answer_prefix: str) -> StepConvention:
        return MathStepConvention(
            delimiter=delimiter, answer_prefix=answer_prefix, boxed_first=False, last_number_fallback=True
        )

    def _to_example(self, split: str, index: int, rec: dict[str, Any]) -> Example:
        q, a = rec["question"], rec["answer"]
        if not isinstance(q, str) or not isinstance(a, str):
            raise TypeError("question and answer must be strings")
        ref = gsm8k_reference(a)
        body = a.rsplit("####", 1)[0]
        if not self.keep_calculator_annotations:
            body = _CALC.sub("", body)
        steps = [ln.strip() for ln in body.split("\n") if ln.strip()]
        steps.append(f"{self.step.answer_prefix}{ref}")
        return Example(
            problem=make_problem(f"gsm8k-{split}-{index}", q, split=split),
            reference=ref,
            solution_steps=tuple(steps),
        )
