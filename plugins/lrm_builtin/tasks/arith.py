"""``arith``: a seeded generator of multi-step integer arithmetic, with exact step labels.

A problem is a fully parenthesised integer expression over ``+ - * /`` followed by ``=``::

    ((12+7)*3)-15=

Its gold solution reduces the expression one operation at a time, innermost first (left
operand's subtree before the right's), one step per chunk (delimiter default ``"\\n"``), then
the answer line::

    12+7=19
    19*3=57
    57-15=42
    Answer: 42

Every intermediate value is a non-negative integer no larger than ``max_value``; ``/`` only
appears where the division is exact. Vocabulary: digits, ``+-*/()=``, the delimiter and the
answer prefix — small on purpose, a character-level model learns it.

Step correctness (:meth:`ArithTask.step_labels`), exactly. The solution is replayed against the
*state*: the problem's expression tree, in which every step that performs an operation replaces
that operation's node by the step's result. A step ``a op b = c`` is **correct** iff

1. it parses as ``<int> <op> <int> = <int>`` (spaces allowed, ``op`` one of ``+ - * /``);
2. its operation is *available*: the state has a node ``op`` whose two children are both
   numbers — numbers written in the problem or results of earlier steps — equal to ``a`` and
   ``b`` in that order (either order for ``+`` and ``*``);
3. it is arithmetically true: ``c == a op b`` (``/``: exact division, ``b`` divides ``a``).

A step meeting 1 and 2 but not 3 is wrong, and it still replaces the node by its (wrong)
``c``: later steps are judged against the values actually on the page, so a solution that
carries a wrong value on consistently has exactly one wrong step (the one that made the error).
A step failing 1 or 2 is wrong and leaves the state unchanged. The answer line ``Answer: N``
is correct iff the state is fully reduced to one number and ``N`` is that number, and it is
the last step (anything after the answer line is wrong).

:meth:`ArithTask.prefix_labels` gives the cumulative version (step i correct iff steps 0..i
are all correct) — what Math-Shepherd-style rollout labels estimate, and the ground truth for a
PRM's step AUROC; :meth:`ArithTask.first_error` gives the ProcessBench-style label (index of
the earliest wrong step, -1 if none). :meth:`ArithTask.grade` checks only the final answer:
correct iff the last answer line states the true value of the problem.

Splits: problems are generated from one seeded stream per split and assigned to a split by
a hash of their canonical text (the question string): test iff
``sha256(question) mod 10_000 < test_fraction * 10_000``. A question can only land in one
split, so train and test are disjoint by problem, whatever the seeds or sizes.
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence

from lrm_engine.config import TaskConfig
from lrm_engine.core.interfaces import Example, Problem, StepConvention

from ._data import PromptMixin
from .grading import parse_int, strip_special_tokens

OPS = "+-*/"


# --------------------------------------------------------------------------- expressions


class Node:
    """An expression tree node: a number (``op is None``) or a binary operation."""

    __slots__ = ("op", "left", "right", "value")

    def __init__(self, op: str | None = None, left: "Node | None" = None, right: "Node | None" = None,
                 value: int | None = None):
        self.op, self.left, self.right, self.value = op, left, right, value

    @property
    def is_num(self) -> bool:
        return self.op is None

    def copy(self) -> "Node":
        if self.is_num:
            return Node(value=self.value)
        return Node(self.op, self.left.copy(), self.right.copy())

    def render(self, top: bool = True) -> str:
        if self.is_num:
            return str(self.value)
        s = f"{self.left.render(False)}{self.op}{self.right.render(False)}"
        return s if top else f"({s})"


def apply_op(op: str, a: int, b: int) -> int | None:
    """``a op b`` on integers; None where undefined (division by zero or not exact)."""
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    if op == "/":
        if b == 0 or a % b:
            return None
        return a // b
    raise ValueError(f"unknown operator {op!r}")


def evaluate(node: Node) -> int | None:
    if node.is_num:
        return node.value
    a, b = evaluate(node.left), evaluate(node.right)
    if a is None or b is None:
        return None
    return apply_op(node.op, a, b)


def count_ops(node: Node) -> int:
    return 0 if node.is_num else 1 + count_ops(node.left) + count_ops(node.right)


_TOKEN = re.compile(r"\s*(\d+|[-+*/()])")


def parse_expression(text: str) -> Node:
    """Parse a question such as ``((12+7)*3)-15=`` (standard precedence, left-associative)."""
    text = text.strip()
    if text.endswith("="):
        text = text[:-1]
    toks, pos = [], 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m:
            if text[pos:].strip() == "":
                break
            raise ValueError(f"cannot parse expression at {text[pos:]!r}")
        toks.append(m.group(1))
        pos = m.end()
    i = 0

    def peek():
        return toks[i] if i < len(toks) else None

    def take():
        nonlocal i
        if i >= len(toks):
            raise ValueError("unexpected end of expression")
        i += 1
        return toks[i - 1]

    def atom():
        t = take() if peek() is not None else None
        if t == "(":
            n = expr()
            if take() != ")":
                raise ValueError("unbalanced parentheses")
            return n
        if t is None or not t.isdigit():
            raise ValueError(f"expected a number, got {t!r}")
        return Node(value=int(t))

    def term():
        n = atom()
        while peek() in ("*", "/"):
            op = take()
            n = Node(op, n, atom())
        return n

    def expr():
        n = term()
        while peek() in ("+", "-"):
            op = take()
            n = Node(op, n, term())
        return n

    root = expr()
    if i != len(toks):
        raise ValueError(f"trailing tokens {toks[i:]}")
    return root


def gold_steps(node: Node) -> list[tuple[int, str, int, int]]:
    """The canonical reduction order: post-order, left subtree first. ``(a, op, b, c)``."""
    out: list[tuple[int, str, int, int]] = []

    def go(n: Node) -> int:
        if n.is_num:
            return n.value
        a = go(n.left)
        b = go(n.right)
        c = apply_op(n.op, a, b)
        out.append((a, n.op, b, c))
        return c

    go(node)
    return out


# --------------------------------------------------------------------------- generation


class _Gen:
    def __init__(self, rng: random.Random, lo: int, hi: int, max_value: int, ops: str,
                 max_factor: int | None = None, shape: str = "mixed"):
        self.rng, self.lo, self.hi, self.max_value, self.ops = rng, lo, hi, max_value, ops
        self.max_factor = max_factor
        # "chain": every operation combines the running value (left) with a new number (right),
        # so step i reads only the previous result and the question's next operand.
        self.chain = shape == "chain"

    def leaf(self) -> Node:
        return Node(value=self.rng.randint(self.lo, self.hi))

    def build(self, n_ops: int) -> Node:
        """A random tree with ``n_ops`` operations, values assigned bottom-up, all valid."""
        if n_ops == 0:
            return self.leaf()
        if self.chain:
            return self.combine(self.build(n_ops - 1), self.leaf())
        # Mostly chain-like (one side a leaf), sometimes two subexpressions.
        rest = n_ops - 1
        if rest == 0 or self.rng.random() < 0.65:
            k = rest if self.rng.random() < 0.5 else 0
        else:
            k = self.rng.randint(0, rest)
        left, right = self.build(k), self.build(rest - k)
        return self.combine(left, right)

    def combine(self, left: Node, right: Node) -> Node:
        rng = self.rng
        a, b = evaluate(left), evaluate(right)
        ops = list(self.ops)
        rng.shuffle(ops)
        for op in ops:
            L, R = left, right
            if op == "-" and a < b:
                if self.chain:
                    continue
                L, R = right, left
            elif op == "/":
                fixed = self._fix_division(left, right)
                if fixed is None:
                    continue
                L, R = fixed
            elif op == "*":
                fixed = self._fix_product(left, right)
                if fixed is None:
                    continue
                L, R = fixed
            elif op == "+" and a + b > self.max_value:
                continue
            node = Node(op, L, R)
            v = evaluate(node)
            if v is not None and 0 <= v <= self.max_value:
                return node
        # Always possible: subtraction of the smaller from the larger (chains: or an addition).
        if self.chain and a < b:
            return Node("+", left, right)
        return Node("-", left, right) if a >= b else Node("-", right, left)

    def _fix_product(self, left: Node, right: Node):
        a, b = evaluate(left), evaluate(right)
        cap = self.max_factor if self.max_factor is not None else self.hi
        if a * b <= self.max_value and 1 < min(a, b) <= cap:
            return left, right
        # Redraw a leaf operand as a small factor (2..max_factor), keeping the product in range.
        for leaf_right in (True, False):
            leaf, other = (right, a) if leaf_right else (left, b)
            if not leaf.is_num or other <= 1:
                continue
            hi = min(cap, self.hi, self.max_value // other)
            if hi >= 2:
                f = Node(value=self.rng.randint(2, hi))
                return (left, f) if leaf_right else (f, right)
        return None

    def _fix_division(self, left: Node, right: Node):
        a, b = evaluate(left), evaluate(right)
        if b > 1 and a % b == 0 and a > 0:
            return left, right
        if right.is_num and a > 1:
            top = min(self.hi, a - 1, self.max_factor or self.hi) if self.chain else min(self.hi, a - 1)
            divs = [d for d in range(max(2, self.lo), top + 1) if a % d == 0]
            if divs:
                return left, Node(value=self.rng.choice(divs))
        if left.is_num and b > 1 and not self.chain:
            qmax = min(self.hi, self.max_value) // b
            qmin = max(2, -(-self.lo // b))
            if qmin <= qmax:
                q = self.rng.randint(qmin, qmax)
                return Node(value=b * q), right
        return None


# --------------------------------------------------------------------------- the task

_STEP_RE = re.compile(r"^\s*(\d+)\s*([-+*/])\s*(\d+)\s*=\s*(-?\d+)\s*$")


def parse_step(step: str) -> tuple[int, str, int, int] | None:
    """``"12+7=19"`` → ``(12, "+", 7, 19)``; None if the step does not have that shape."""
    m = _STEP_RE.match(step)
    if not m:
        return None
    a, b, c = parse_int(m.group(1)), parse_int(m.group(3)), parse_int(m.group(4))
    if a is None or b is None or c is None:  # a number too long to read: not a step
        return None
    return a, m.group(2), b, c


@dataclass
class ArithTaskConfig(TaskConfig):
    # Registry name of the task.
    name: str = "arith"
    # Seed of the problem generator (the same seed gives the same problems in the same order).
    seed: int = 0
    # Fewest operations (= solution steps before the answer line) in a problem.
    min_steps: int = 2
    # Most operations in a problem.
    max_steps: int = 4
    # Smallest operand written in a problem.
    min_operand: int = 1
    # Largest operand written in a problem.
    max_operand: int = 99
    # Bound on every intermediate and final value (all values are in [0, max_value]).
    max_value: int = 9999
    # The smaller factor of every multiplication is at most this (null = no limit).
    max_factor: Optional[int] = 12
    # Expression shape: "mixed" (random trees, mostly chain-like) or "chain" (left-deep: each step
    # combines the previous result with the next number of the question).
    shape: str = "mixed"
    # Operators to use, from "+-*/" ("/" is exact integer division).
    ops: str = "+-*/"
    # Number of problems in the train split.
    num_train: int = 10000
    # Number of problems in the test split.
    num_test: int = 500
    # Share of the problem space hashed into the test split (by question text).
    test_fraction: float = 0.1
    # The string that ends one step.
    delimiter: str = "\n"
    # The prefix of the final-answer line.
    answer_prefix: str = "Answer: "
    # The prompt; {question} is replaced by the expression, e.g. "((12+7)*3)-15=".
    prompt_template: str = "{question}\n"


class ArithTask(PromptMixin):
    """Synthetic multi-step integer arithmetic with exact final-answer and per-step checks."""

    name = "arith"
    splits = ("train", "test")

    def __init__(
        self,
        *,
        seed: int = 0,
        min_steps: int = 2,
        max_steps: int = 4,
        min_operand: int = 1,
        max_operand: int = 99,
        max_value: int = 9999,
        max_factor: int | None = 12,
        shape: str = "mixed",
        ops: str = "+-*/",
        num_train: int = 10000,
        num_test: int = 500,
        test_fraction: float = 0.1,
        delimiter: str = "\n",
        answer_prefix: str = "Answer: ",
        prompt_template: str = "{question}\n",
    ):
        if not 1 <= min_steps <= max_steps:
            raise ValueError(f"arith: need 1 <= min_steps <= max_steps, got {min_steps}, {max_steps}")
        if not 0 <= min_operand <= max_operand <= max_value:
            raise ValueError("arith: need 0 <= min_operand <= max_operand <= max_value")
        if not ops or set(ops) - set(OPS):
            raise ValueError(f"arith: ops must be a non-empty subset of {OPS!r}, got {ops!r}")
        if not 0.0 < test_fraction < 1.0:
            raise ValueError("arith: test_fraction must be in (0, 1)")
        if not delimiter:
            raise ValueError("arith: delimiter must be non-empty")
        self.seed, self.min_steps, self.max_steps = seed, min_steps, max_steps
        self.min_operand, self.max_operand, self.max_value = min_operand, max_operand, max_value
        if shape not in ("mixed", "chain"):
            raise ValueError(f"arith: shape must be 'mixed' or 'chain', got {shape!r}")
        self.max_factor = max_factor
        self.shape = shape
        self.ops, self.num_train, self.num_test, self.test_fraction = ops, num_train, num_test, test_fraction
        self.prompt_style, self.prompt_template, self.system_prompt = "plain", prompt_template, ""
        self.step = StepConvention(delimiter=delimiter, answer_prefix=answer_prefix)
        self._cache: dict[str, list[Example]] = {}

    # -- splits ----------------------------------------------------------------------------
    def split_of(self, question: str) -> str:
        """The split a question belongs to, from a hash of its text alone."""
        h = int.from_bytes(hashlib.sha256(question.encode()).digest()[:8], "big") % 10_000
        return "test" if h < self.test_fraction * 10_000 else "train"

    def _generate(self, split: str, n: int) -> list[Example]:
        # One stream per split; the split hash decides membership, so streams cannot overlap.
        rng = random.Random(f"arith/{self.seed}/{split}")
        gen = _Gen(rng, self.min_operand, self.max_operand, self.max_value, self.ops, self.max_factor,
                   self.shape)
        seen: set[str] = set()
        out: list[Example] = []
        tries, max_tries = 0, 200 * n + 1000
        while len(out) < n:
            tries += 1
            if tries > max_tries:
                raise ValueError(
                    f"arith: could only generate {len(out)} distinct {split} problems of {n} "
                    f"asked; the problem space is too small (raise max_operand / max_steps, or "
                    f"lower num_{split})"
                )
            k = rng.randint(self.min_steps, self.max_steps)
            root = gen.build(k)
            q = root.render() + "="
            if q in seen or self.split_of(q) != split:
                continue
            seen.add(q)
            out.append(self.make_example(q, root))
        return out

    def make_example(self, question: str, root: Node | None = None) -> Example:
        """The example of a question (its gold steps and answer computed from the expression)."""
        if root is None:
            root = parse_expression(question)
        steps = gold_steps(root)
        answer = steps[-1][3] if steps else root.value
        pid = "arith-" + hashlib.sha256(question.encode()).hexdigest()[:12]
        text = [f"{a}{op}{b}={c}" for a, op, b, c in steps] + [f"{self.step.answer_prefix}{answer}"]
        return Example(
            problem=Problem(id=pid, question=question, meta={"steps": len(steps)}),
            reference=str(answer),
            solution_steps=tuple(text),
        )

    def examples(self, split: str = "train") -> Iterator[Example]:
        if split not in self.splits:
            raise ValueError(f"arith: unknown split {split!r}; splits are {list(self.splits)}")
        if split not in self._cache:
            n = self.num_train if split == "train" else self.num_test
            self._cache[split] = self._generate(split, n)
        return iter(self._cache[split])

    # -- grading -----------------------------------------------------------------------------
    def extract_answer(self, solution: str) -> int | None:
        """The integer of the last answer line (special-token text such as ``</s>`` dropped);
        None when there is none or it is not a readable integer."""
        a = self.step.extract_answer(strip_special_tokens(solution or ""))
        return None if a is None else parse_int(a)

    def grade(self, example: Example, solution: str) -> bool:
        """Exact: the last answer line states the problem's value (never raises)."""
        a = self.extract_answer(solution)
        return a is not None and a == int(example.reference)

    def _answer_value(self, step: str) -> int | None | str:
        s = strip_special_tokens(step).strip()
        p = self.step.answer_prefix.strip()
        if not s.startswith(p):
            return "not-answer"
        return parse_int(s[len(p):])

    def step_labels(self, example: Example, steps: Sequence[str]) -> list[bool]:
        """Exact local correctness of every step (see the module docstring for the definition)."""
        state = parse_expression(example.problem.question)
        labels: list[bool] = []
        answered = False
        for step in steps:
            if answered:
                labels.append(False)
                continue
            ans = self._answer_value(step)
            if ans != "not-answer":
                answered = True
                labels.append(ans is not None and state.is_num and ans == state.value)
                continue
            parsed = parse_step(step)
            if parsed is None:
                labels.append(False)
                continue
            a, op, b, c = parsed
            node = _find_reducible(state, a, op, b)
            if node is None:
                labels.append(False)
                continue
            true = apply_op(op, node.left.value, node.right.value)
            labels.append(true is not None and c == true)
            node.op, node.left, node.right, node.value = None, None, None, c
        return labels

    def prefix_labels(self, example: Example, steps: Sequence[str]) -> list[bool]:
        """Step i is True iff steps 0..i are all correct (the prefix can still be right)."""
        out, ok = [], True
        for lab in self.step_labels(example, steps):
            ok = ok and lab
            out.append(ok)
        return out

    def first_error(self, example: Example, steps: Sequence[str]) -> int:
        """Index of the earliest wrong step, -1 if every step is correct (ProcessBench label)."""
        for i, lab in enumerate(self.step_labels(example, steps)):
            if not lab:
                return i
        return -1

    # -- noise -------------------------------------------------------------------------------
    def noisy_solutions(self, split: str = "train", fraction: float = 0.2, seed: int = 0,
                        limit: int | None = None) -> list["NoisySolution"]:
        """Gold solutions of a split, ``round(fraction * n)`` of them with one injected error."""
        exs = list(self.examples(split))
        if limit is not None:
            exs = exs[:limit]
        return inject_step_noise(exs, fraction, seed, answer_prefix=self.step.answer_prefix,
                                 max_value=self.max_value)


def _find_reducible(node: Node, a: int, op: str, b: int) -> Node | None:
    """The first (left-to-right) reducible node ``a op b`` (commuted for + and *)."""
    if node.is_num:
        return None
    if node.left.is_num and node.right.is_num and node.op == op:
        x, y = node.left.value, node.right.value
        if (x, y) == (a, b) or (op in "+*" and (y, x) == (a, b)):
            return node
    return _find_reducible(node.left, a, op, b) or _find_reducible(node.right, a, op, b)


# --------------------------------------------------------------------------- noise injection


@dataclass(frozen=True)
class NoisySolution:
    """A solution for SFT data: the gold steps, or gold with one wrong step carried through."""

    example: Example
    # The solution steps (answer line last).
    steps: tuple[str, ...]
    # Index of the injected wrong step, -1 for an untouched gold solution.
    error_step: int


def _corruptions(c: int, rng: random.Random) -> list[int]:
    """Plausible wrong values for ``c``: one digit off by one (a dropped or extra carry), or
    off by a small amount; all non-negative and different from ``c``."""
    cands = set()
    digits = len(str(abs(c)))
    for k in range(digits + (1 if c < 10 else 0)):
        for s in (1, -1):
            cands.add(c + s * 10 ** k)
    for d in (2, 3):
        cands.update((c + d, c - d))
    out = sorted(v for v in cands if v >= 0 and v != c)
    rng.shuffle(out)
    return out


def corrupt_solution(question: str, rng: random.Random, answer_prefix: str = "Answer: ",
                     max_value: int | None = None) -> tuple[tuple[str, ...], int] | None:
    """Gold solution of ``question`` with one wrong step; later steps computed from it.

    Picks a random step and a random plausible wrong value for it such that every later step
    stays defined (exact divisions, non-negative values, at most ``max_value`` when given);
    returns ``(steps, index of the wrong step)``, or None when no corruption keeps the rest
    defined.
    """
    root = parse_expression(question)
    gold = gold_steps(root)
    order = list(range(len(gold)))
    rng.shuffle(order)
    for i in order:
        for wrong in _corruptions(gold[i][3], rng):
            steps = _replay_with(root, i, wrong, max_value)
            if steps is not None:
                text = [f"{a}{op}{b}={c}" for a, op, b, c in steps] + [f"{answer_prefix}{steps[-1][3]}"]
                return tuple(text), i
    return None


def _replay_with(root: Node, k: int, wrong: int, max_value: int | None):
    """Reduce ``root`` in canonical order, replacing step k's result by ``wrong``."""
    out = []

    def go(n: Node):
        if n.is_num:
            return n.value
        a = go(n.left)
        if a is None:
            return None
        b = go(n.right)
        if b is None:
            return None
        c = apply_op(n.op, a, b)
        if len(out) == k:
            c = wrong
        if c is None or c < 0 or (max_value is not None and c > max_value):
            return None
        out.append((a, n.op, b, c))
        return c

    return out if go(root) is not None else None


def inject_step_noise(examples: Sequence[Example], fraction: float, seed: int = 0,
                      answer_prefix: str = "Answer: ", max_value: int | None = None) -> list[NoisySolution]:
    """Corrupt ``round(fraction * len(examples))`` gold solutions (chosen by ``seed``) with one
    wrong step each, the rest of each solution computed consistently from the wrong value.

    Every other example keeps its gold solution (``error_step == -1``). An example whose
    corruption is impossible (rare: every wrong value breaks a later exact division) is
    replaced by the next uncorrupted one, so the count is exact whenever enough exist.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError("fraction must be in [0, 1]")
    rng = random.Random(f"arith-noise/{seed}")
    n = len(examples)
    want = round(fraction * n)
    order = list(range(n))
    rng.shuffle(order)
    bad: dict[int, tuple[tuple[str, ...], int]] = {}
    for i in order:
        if len(bad) == want:
            break
        r = corrupt_solution(examples[i].problem.question, rng, answer_prefix, max_value)
        if r is not None:
            bad[i] = r
    out = []
    for i, ex in enumerate(examples):
        if i in bad:
            steps, k = bad[i]
            out.append(NoisySolution(ex, steps, k))
        else:
            out.append(NoisySolution(ex, tuple(ex.solution_steps), -1))
    return out
