"""The Countdown task: reach a target number from a list of integers with + - *.

Each given number may be used at most once; every intermediate result may be used once as
well. A solution is one operation per line, ``"5 * 3 = 15"``, then ``"Answer: <target>"``.
The verifier re-checks every step exactly (operands available, arithmetic right) and the final
answer; :meth:`CountdownTask.step_labels` gives per-step correctness for process supervision.
Problems are generated from a seed, so a split is the same on every machine.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from dataclasses import dataclass
from typing import Iterator

from lrm_engine.config import TaskConfig
from lrm_engine.core.interfaces import Example, Problem, StepConvention

# "a op b = c" with integers (a leading minus allowed) and op in + - *.
_STEP = re.compile(r"^\s*(-?\d+)\s*([+\-*])\s*(-?\d+)\s*=\s*(-?\d+)\s*$")
_OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


@dataclass
class CountdownConfig(TaskConfig):
    """Schema of the option ``task=countdown``."""

    # Registry name of the task.
    name: str = "countdown"
    # How many integers each problem gives.
    num_numbers: int = 4
    # The given integers are drawn uniformly from 1..max_number.
    max_number: int = 10
    # Seed of the problem generator (each split and index gets its own stream).
    seed: int = 0
    # Number of problems in the "train" split.
    num_train: int = 1000
    # Number of problems in the "test" split.
    num_test: int = 100


class CountdownTask:
    """Countdown problems with an exact step verifier (implements ``Task``)."""

    name = "countdown"

    def __init__(self, num_numbers: int = 4, max_number: int = 10, seed: int = 0,
                 num_train: int = 1000, num_test: int = 100) -> None:
        if num_numbers < 2:
            raise ValueError(f"task.num_numbers must be at least 2, got {num_numbers}")
        if max_number < 1:
            raise ValueError(f"task.max_number must be at least 1, got {max_number}")
        self.num_numbers = num_numbers
        self.max_number = max_number
        self.seed = seed
        self.sizes = {"train": num_train, "test": num_test}
        self.step = StepConvention(delimiter="\n", answer_prefix="Answer: ")

    # --- generation ---------------------------------------------------------------------------

    def examples(self, split: str) -> Iterator[Example]:
        """The seeded problems of ``split`` ("train" or "test")."""
        if split not in self.sizes:
            raise KeyError(f"countdown has splits {sorted(self.sizes)}, not {split!r}")
        for i in range(self.sizes[split]):
            yield self.generate(split, i)

    def generate(self, split: str, index: int) -> Example:
        """Problem ``index`` of ``split``: numbers, a reachable target, and a gold solution."""
        rng = random.Random(f"countdown:{self.seed}:{split}:{index}")
        numbers = [rng.randint(1, self.max_number) for _ in range(self.num_numbers)]
        pool = list(numbers)
        rng.shuffle(pool)
        used = rng.randint(2, len(pool))
        value, steps = pool[0], []
        for b in pool[1:used]:
            op = rng.choice("+-*")
            a, x = (value, b) if op != "-" or value >= b else (b, value)
            value = _OPS[op](a, x)
            steps.append(f"{a} {op} {x} = {value}")
        problem = Problem(
            id=f"countdown-{split}-{index}",
            question=(f"Using the numbers {numbers}, each at most once, and + - *, reach "
                      f"{value}. Write one operation per line like '5 * 3 = 15', then "
                      f"'Answer: {value}'."),
            meta={"numbers": tuple(numbers), "target": value},
        )
        steps.append(f"{self.step.answer_prefix}{value}")
        return Example(problem=problem, reference=str(value), solution_steps=tuple(steps))

    # --- Task protocol ------------------------------------------------------------------------

    def prompt(self, problem: Problem) -> str:
        """The question followed by a newline: the policy writes the steps."""
        return problem.question + "\n"

    def grade(self, example: Example, solution: str) -> bool:
        """Correct iff every step checks and the answer is the target (reached by the steps)."""
        labels = self.step_labels(example.problem, solution)
        return bool(labels) and all(labels) and \
            self.step.extract_answer(solution) == example.reference

    # --- verifier -----------------------------------------------------------------------------

    def step_labels(self, problem: Problem, solution: str) -> list[bool]:
        """Per step: whether the solution is still valid up to and including that step.

        A computation step is valid when its operands are available (a given number or an
        earlier result, each used at most once) and its arithmetic is exact. The answer line is
        valid when it equals the target and the target is available (given or computed).
        Once a step is invalid, every later step is labelled invalid too.
        """
        available = Counter(int(n) for n in problem.meta["numbers"])
        target = int(problem.meta["target"])
        labels: list[bool] = []
        ok = True
        for line in self.step.split_steps(solution):
            if ok:
                ok = self._check(line, available, target)
            labels.append(ok)
        return labels

    def _check(self, line: str, available: Counter[int], target: int) -> bool:
        """Check one line against the available numbers; consume operands, add the result."""
        line = line.strip()
        if line.startswith(self.step.answer_prefix.strip()):
            answer = line[len(self.step.answer_prefix.strip()):].strip()
            return answer.lstrip("-").isdigit() and int(answer) == target and available[target] > 0
        m = _STEP.match(line)
        if m is None:
            return False
        a, op, b, c = int(m[1]), m[2], int(m[3]), int(m[4])
        need = Counter([a, b])
        if any(available[n] < k for n, k in need.items()) or _OPS[op](a, b) != c:
            return False
        available.subtract(need)
        available[c] += 1
        return True
