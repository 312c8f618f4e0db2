"""Scripted world for the annotator tests, and a small entry point for the kill-and-resume test.

``PrefixPolicy``: a ScriptedPolicy whose roots may start mid-solution (annotators probe a
solution prefix as the root of a fresh tree: prompt + prefix steps). The root's path is parsed
back from the prompt's ``s<depth>c<choice>`` steps; ``text`` covers the steps after the root.

World (branching 3, depth 4): child i of a node is choice i (logprob -1-i), except that after a
first step 1, the third step's most likely choice is 2. A solution is right ("yes") unless its
third choice is 2. So greedy rollouts from the question give (0,0,0,0) right, (1,0,2,0) wrong
(first error: step 3), (2,0,0,0) right.

    python tests/scripted_annotate.py <annotator> <out_dir> <num_problems> [delay_s]
"""

from __future__ import annotations

import re
import sys
import time

import torch

from lrm_engine.core.engine import SearchContext
from lrm_engine.core.interfaces import Example, Problem, StepConvention
from lrm_engine.core.tree import BatchedTree
from lrm_engine.testing import ScriptedPolicy, ScriptedWorld

STEP = StepConvention()


class PrefixPolicy(ScriptedPolicy):
    delay_s: float = 0.0

    def init_roots(self, tree, prompts):
        self._root_len = getattr(self, "_root_len", {})
        for b, p in enumerate(prompts):
            path = tuple(int(c) for _, c in re.findall(r"s(\d+)c(\d+)", p))
            self._paths[(id(tree), b, BatchedTree.ROOT)] = path
            self._root_len[(id(tree), b)] = len(path)

    def expand(self, tree, nodes, k, sampling=None):
        if self.delay_s:
            time.sleep(self.delay_s)
        return super().expand(tree, nodes, k, sampling)

    def text(self, tree, b, n, with_prompt=False):
        p = self.path(tree, b, n)
        r = self._root_len[(id(tree), b)]
        return "".join(self.world.step_text(p[: i + 1]) + "\n" for i in range(r, len(p)))


def world() -> ScriptedWorld:
    def lp(p):
        if len(p) == 3 and p[0] == 1:
            return 0.0 if p[-1] == 2 else -1.0 - p[-1]
        return -1.0 - p[-1]

    return ScriptedWorld(branching=3, depth=4, logprob=lp, score=lambda p: 0.5,
                         answer=lambda p: "no" if p[2] == 2 else "yes")


def truth(steps) -> list[bool]:
    """Exact prefix labels of a solution in this world: good until the third choice is 2."""
    ok, out = True, []
    for i, s in enumerate(steps):
        if i == 2 and re.match(r"s3c2", s):
            ok = False
        out.append(ok)
    return out


def grade(ex: Example, text: str) -> bool:
    return STEP.extract_answer(text) == ex.reference


def make_ctx(delay_s: float = 0.0, max_steps: int = 6) -> SearchContext:
    pol = PrefixPolicy(world())
    pol.delay_s = delay_s
    return SearchContext(policy=pol, step=STEP, prompt=lambda p: p.question + "\n", max_steps=max_steps)


def examples(n: int, reference: str = "yes") -> list[Example]:
    return [Example(problem=Problem(id=f"e{i}", question=f"q{i}"), reference=reference) for i in range(n)]


def build(name: str):
    from lrm_engine.plugin_manager import registries

    small = {"omegaprm": dict(num_rollouts=3), "pairs": dict(num_candidates=3, num_rollouts=2),
             "journey": dict(num_candidates=3, num_rollouts=2)}
    return registries()["annotator"].create(name, **small.get(name, {}))


def main(argv: list[str]) -> int:
    torch.set_num_threads(1)
    name, out_dir, n = argv[0], argv[1], int(argv[2])
    delay = float(argv[3]) if len(argv) > 3 else 0.0
    ann = build(name)
    out = ann.open_output(out_dir)
    ann.annotate(make_ctx(delay), examples(n), grade, out, batch_size=2, progress=False)
    print("done", len(out.records()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
