"""`pairs`: preference pairs from a Monte-Carlo search tree, as TRL DPO JSONL.

The tree (:func:`explore`, shared with ``journey``): from the question, ``num_candidates``
sibling next steps are drawn, each valued by ``num_rollouts`` rollouts (MC value = share that
reach the reference answer); the search goes on from the best non-final sibling with MC > 0,
for up to ``max_depth`` levels. All problems of a batch advance together: one probe tree per
level (root = prompt + prefix), one policy call per tree level.

Records (``pairs.jsonl``; the pref loader :func:`lrm_engine.train.pref_data.load_pref_jsonl`
reads them back):

- step pairs (``kind: "step"``, Step-DPO): for a node, sibling steps whose MC values differ by
  more than ``margin``: ``{"prompt", "prefix" (the steps before, as text), "chosen" (the better
  step), "rejected", "score_chosen", "score_rejected" (their MC values), "depth"}``;
  ``prefix_in_prompt=true`` folds the prefix into ``prompt`` (plain TRL DPO records);
- solution pairs (``kind: "solution"``): a correct vs an incorrect complete solution from the
  tree's rollouts: ``{"prompt", "chosen", "rejected", "score_chosen": 1.0, "score_rejected": 0.0}``.

Ids are ``<problem id>#s<depth>.<m>`` and ``<problem id>#o<m>``. Empty steps never enter a pair
(counted as ``empty_steps``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from lrm_engine.core.interfaces import Example

from .common import Candidate, GroupedAnnotator, Stats, probe, sampling_config


@dataclass
class Level:
    """One searched node: its prefix and its sibling candidates (merged by step text)."""

    prefix: tuple[str, ...]
    candidates: list[Candidate] = field(default_factory=list)


def _merge(cands: Sequence[Candidate]) -> list[Candidate]:
    out: dict[str, Candidate] = {}
    for c in cands:
        if c.step in out:
            out[c.step].rollouts.extend(c.rollouts)
        else:
            out[c.step] = Candidate(c.step, list(c.rollouts))
    return list(out.values())


def explore(ctx, examples: Sequence[Example], grade, stats: Stats, *, num_candidates: int,
            num_rollouts: int, max_depth: int, sampling) -> list[list[Level]]:
    """Per example, the searched levels from the root down the best branch (module docstring)."""
    levels: list[list[Level]] = [[] for _ in examples]
    prefix: list[tuple[str, ...] | None] = [() for _ in examples]
    for _ in range(max(0, max_depth)):
        open_ = [i for i, p in enumerate(prefix) if p is not None]
        if not open_:
            break
        res = probe(ctx, [(examples[i], prefix[i]) for i in open_], (num_candidates, num_rollouts),
                    grade, stats, sampling)
        for i, cands in zip(open_, res):
            lvl = Level(prefix[i], _merge(cands))
            levels[i].append(lvl)
            nxt = [c for c in lvl.candidates if c.rollouts and not c.terminal and c.mc > 0
                   and c.step.strip()]
            if not nxt:
                prefix[i] = None
                continue
            best = max(nxt, key=lambda c: c.mc)  # first of the best on ties
            prefix[i] = prefix[i] + (best.step,)
    return levels


@dataclass
class PairsAnnotator(GroupedAnnotator):
    """Step-level and solution-level preference pairs from an MC search tree (module docstring)."""

    # Sibling next steps drawn at every searched node.
    num_candidates: int = 4
    # Rollouts per sibling (its MC value).
    num_rollouts: int = 4
    # Levels searched down the best branch.
    max_depth: int = 4
    # A step pair needs score_chosen - score_rejected > margin.
    margin: float = 0.3
    # Most step pairs per node (largest value gaps first).
    max_pairs_per_node: int = 2
    # Most correct-vs-incorrect solution pairs per problem (0: none).
    max_solution_pairs: int = 2
    # Put the prefix into `prompt` (plain TRL DPO) instead of a separate `prefix` (Step-DPO).
    prefix_in_prompt: bool = False
    # Sampling temperature of the candidates and rollouts.
    temperature: float = 1.0
    # Sampling seed.
    seed: int = 0
    name: str = "pairs"
    input_file: str | None = None

    output_format = "dpo"
    output_file = "pairs.jsonl"
    needs_reference = True

    def __post_init__(self) -> None:
        if self.num_candidates < 2:
            raise ValueError("annotate.num_candidates must be >= 2 (pairs need siblings)")
        if self.num_rollouts < 1:
            raise ValueError("annotate.num_rollouts must be >= 1")

    def step_pairs(self, lvl: Level) -> list[tuple[Candidate, Candidate]]:
        cands = [c for c in lvl.candidates if c.rollouts]
        good = []
        for c in cands:
            if not c.step.strip():
                self.stats.add("empty_steps")
            else:
                good.append(c)
        pairs = [(a, b) for a in good for b in good if a.mc - b.mc > self.margin]
        pairs.sort(key=lambda p: -(p[0].mc - p[1].mc))
        return pairs[: self.max_pairs_per_node]

    def annotate_batch(self, ctx, examples: Sequence[Example], grade):
        stats = self.stats
        trees = explore(ctx, examples, grade, stats, num_candidates=self.num_candidates,
                        num_rollouts=self.num_rollouts, max_depth=self.max_depth,
                        sampling=sampling_config(self.temperature, self.seed))
        join = ctx.step.join_steps
        out = []
        for ex, levels in zip(examples, trees):
            pid = ex.problem.id
            prompt = ctx.prompt(ex.problem)
            recs = []
            for lvl in levels:
                pre = join(lvl.prefix)
                for m, (a, b) in enumerate(self.step_pairs(lvl)):
                    rec = {"id": f"{pid}#s{len(lvl.prefix)}.{m}", "kind": "step",
                           "prompt": prompt + pre if self.prefix_in_prompt else prompt,
                           "chosen": a.step, "rejected": b.step,
                           "score_chosen": float(a.mc), "score_rejected": float(b.mc),
                           "depth": len(lvl.prefix)}
                    if not self.prefix_in_prompt:
                        rec["prefix"] = pre
                    recs.append(rec)
            right, wrong = {}, {}
            for lvl in levels:
                for c in lvl.candidates:
                    for r in c.rollouts:
                        if r.empty or not r.finished:
                            continue
                        text = join(lvl.prefix + r.steps)
                        (right if r.correct else wrong).setdefault(text, None)
            for m, (a, b) in enumerate(zip(list(right)[: self.max_solution_pairs], wrong)):
                recs.append({"id": f"{pid}#o{m}", "kind": "solution", "prompt": prompt,
                             "chosen": a, "rejected": b, "score_chosen": 1.0, "score_rejected": 0.0})
            stats.add("step_pairs", sum(r["kind"] == "step" for r in recs))
            stats.add("solution_pairs", sum(r["kind"] == "solution" for r in recs))
            status = "ok" if recs else ("no_rollout" if not levels or not any(l.candidates for l in levels)
                                        else "no_pair")
            out.append((pid, recs, status))
        return out
