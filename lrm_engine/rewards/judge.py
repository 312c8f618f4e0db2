"""``judge``: LLM-as-a-judge process reward — a prompted model gives a verdict per step.

For every scored node (b, n) the judge sees one prompt (``template``) holding the question (the
tree's root prompt), the steps root..n numbered ``Step 1: ...``, and the question "Is step i
correct?" about the node's own (last) step i. The judge's continuation (greedy, at most
``max_new_tokens`` tokens) is parsed by :func:`parse_verdict`:

- "incorrect", "not correct", "wrong", "false", "no", "bad", "-"  -> 0.0
- "correct", "right", "true", "yes", "good", "+"                  -> 1.0
- the first verdict word found wins ("Step 3 is incorrect" -> 0.0, "correct." -> 1.0);
- nothing recognisable, or an exception from the generator, is **unparseable**: counted in
  ``counters_judge["unparseable"]`` and scored ``neutral`` (0.5). A bad verdict never crashes
  a search.

The generator is any ``generate(prompts: list[str]) -> list[str]`` callable; the default wraps a
local causal LM (loaded like the policies) doing batched greedy decoding
(:class:`~lrm_engine.rewards.prompted.PromptedLM`). One generation batch per ``score`` call for
all P pairs; a node scored twice returns its cached verdict.

Step scores are aggregated along a path like any PRM's (``search_run.aggregation``: min | prod |
last | mean).
"""

from __future__ import annotations

import re
import weakref
from typing import Callable, Sequence

import torch

DEFAULT_TEMPLATE = (
    "Question: {question}\n"
    "{steps}"
    "Is step {i} correct? Answer \"Step {i} is correct\" or \"Step {i} is incorrect\".\n"
    "Step {i} is"
)

_NEG = r"incorrect|not\s+correct|wrong|false|no|bad|invalid|-"
_POS = r"correct|right|true|yes|good|valid|\+"
_VERDICT = re.compile(rf"(?<![a-z])(?P<neg>{_NEG})(?![a-z])|(?<![a-z])(?P<pos>{_POS})(?![a-z])")


def parse_verdict(text) -> float | None:
    """1.0 (correct), 0.0 (incorrect) or None (unparseable) from a judge's reply."""
    if not isinstance(text, str):
        return None
    m = _VERDICT.search(text.lower())
    if m is None:
        return None
    return 0.0 if m.group("neg") is not None else 1.0


class JudgeReward:
    """A RewardModel whose step score is a prompted judge's parsed verdict (see module doc)."""

    name = "judge"

    def __init__(self, generate: Callable[[list[str]], Sequence[str]], *,
                 template: str = DEFAULT_TEMPLATE, neutral: float = 0.5, lm=None):
        if not 0.0 <= neutral <= 1.0:
            raise ValueError("judge neutral score must be in [0, 1]")
        self.generate = generate
        self.template = template
        self.neutral = float(neutral)
        # The PromptedLM behind the default generator (for counters), if any.
        self.lm = lm
        # verdict counters: judged, correct, incorrect, unparseable, errors.
        self.counters_judge = {"judged": 0, "correct": 0, "incorrect": 0, "unparseable": 0, "errors": 0}
        self._cache: dict[int, tuple[weakref.ref, dict]] = {}

    @property
    def counters(self):
        return self.lm.counters if self.lm is not None else None

    def _tree_cache(self, tree) -> dict:
        ent = self._cache.get(id(tree))
        if ent is None or ent[0]() is not tree:
            ent = (weakref.ref(tree), {})
            self._cache[id(tree)] = ent
        return ent[1]

    def release(self, tree) -> None:
        self._cache.pop(id(tree), None)

    @staticmethod
    def node_steps(tree, b: int, n: int, policy) -> list[str]:
        """The step texts root..n (one per node on the path, the prompt excluded)."""
        path = tree.path_to_root(b, n)[::-1]
        texts = [policy.text(tree, b, m) for m in path]
        steps = []
        for prev, cur in zip(texts, texts[1:]):
            steps.append(cur[len(prev):] if cur.startswith(prev) else cur)
        return [s.strip() for s in steps]

    @staticmethod
    def question(tree, b: int, policy) -> str:
        try:
            return policy.text(tree, b, tree.ROOT, with_prompt=True).strip()
        except TypeError:
            return ""

    def render(self, question: str, steps: Sequence[str]) -> str:
        body = "".join(f"Step {j + 1}: {s}\n" for j, s in enumerate(steps))
        return self.template.format(question=question, steps=body, i=len(steps))

    def judge_texts(self, prompts: list[str]) -> list[float]:
        """Verdict scores for rendered prompts (unparseable or failed: neutral, counted)."""
        if not prompts:
            return []
        try:
            replies = list(self.generate(prompts))
            if len(replies) != len(prompts):
                raise ValueError(f"judge generator returned {len(replies)} replies for {len(prompts)} prompts")
        except Exception:  # a broken judge must not stop the search
            self.counters_judge["errors"] += 1
            replies = [None] * len(prompts)
        out = []
        for r in replies:
            v = parse_verdict(r)
            self.counters_judge["judged"] += 1
            if v is None:
                self.counters_judge["unparseable"] += 1
                out.append(self.neutral)
            else:
                self.counters_judge["correct" if v else "incorrect"] += 1
                out.append(v)
        return out

    def score(self, tree, pairs, policy) -> torch.Tensor:
        pl = [(int(b), int(n)) for b, n in torch.as_tensor(pairs).reshape(-1, 2).tolist()]
        cache = self._tree_cache(tree)
        todo = [p for p in dict.fromkeys(pl) if p not in cache]
        prompts = [self.render(self.question(tree, b, policy), self.node_steps(tree, b, n, policy))
                   for b, n in todo]
        for p, s in zip(todo, self.judge_texts(prompts)):
            cache[p] = s
        return torch.tensor([cache[p] for p in pl], dtype=torch.float32)
