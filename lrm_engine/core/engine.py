"""The engine's one loop: problems -> BatchedTree -> Policy.expand -> RewardModel.score -> search.

`SearchContext` is what a search algorithm gets: the policy, the reward model (optional), the
step convention and prompt format of the task (never its references), the kernel backend and
the step-score aggregation. Its `expand` is the only way searches grow trees, so every
iteration is one batched policy call plus one batched reward call for all problems of a batch.

`run_search` drives a dataset through a search in batches and appends per-problem results to
results.jsonl as each batch finishes (resumable: finished ids are skipped on restart).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import torch

from lrm_engine.core.aggregate import check_aggregation, path_scores
from lrm_engine.core.interfaces import Problem, SearchResult, StepConvention
from lrm_engine.core.results import ResultsFile
from lrm_engine.core.tree import BatchedTree


@dataclass
class Expansion:
    """The children one `SearchContext.expand` call created."""

    # children: [B, M, k] int32 — child slots per (tree, given node); -1 where none.
    children: torch.Tensor
    # pairs: [P, 2] int64 — (b, n) of every created child, in the order scored.
    pairs: torch.Tensor
    # scores: [P] float32 — reward-model step scores of those children (NaN without a reward model).
    scores: torch.Tensor
    # logprob_sum: [B, M, k] float32 — policy log-probability of each child step (NaN where none).
    logprob_sum: torch.Tensor


@dataclass
class SearchContext:
    """Everything a search needs, resolved once (no registry lookups inside the loop)."""

    policy: Any
    step: StepConvention
    prompt: Callable[[Problem], Any]
    reward: Any | None = None
    sampling: Any = None
    ops: Any = None
    aggregation: str = "min"
    # Upper bound on reasoning steps per solution.
    max_steps: int = 12
    # Grow trees when they run out of node slots instead of failing.
    grow_nodes: bool = True
    # export.tree=json|html: searches attach each problem's whole tree to its SearchResult
    # (common.finish reads it before the policy releases the tree; lrm_engine/export/).
    export_trees: bool = False
    timings: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_aggregation(self.aggregation)
        # Rewards that need Example.reference (the verifier) have no place inside search.
        from lrm_engine.rewards.verifier import refuse_reference_rewards

        refuse_reference_rewards(self.reward)
        if self.ops is None:
            from lrm_engine.ops import get_backend

            self.ops = get_backend("auto")

    # -------------------------------------------------------------- trees
    def new_tree(self, problems: Sequence[Problem], num_actions: int, capacity: int) -> BatchedTree:
        """One tree per problem, roots encoded by the policy."""
        tree = BatchedTree.empty(len(problems), max(capacity, 2), num_actions)
        t0 = time.perf_counter()
        self.policy.init_roots(tree, [self.prompt(p) for p in problems])
        self._tick("policy", t0)
        # Root visit = 1, so visits(n) = 1 + sum(children) holds for every backed-up node.
        root = torch.zeros((tree.batch_size, 1), dtype=torch.int32)
        self.ops.backup(tree, root, torch.zeros((tree.batch_size, 1)), None, 1.0)
        return tree

    def expand(
        self, tree: BatchedTree, nodes: torch.Tensor, k: int, sampling: Any = None, score: bool = True
    ) -> Expansion:
        """Expand nodes [B, M] (-1 = none) with k children each; score the new steps; back them up.

        One policy call and (with a reward model) one reward call for the whole batch. Step
        scores go into the tree's path aggregates and value sums through the `backup` op.
        """
        nodes = nodes.to(torch.int32)
        tree.ensure_capacity(int((nodes >= 0).sum(1).max().item()) * k if nodes.numel() else 0,
                             grow=self.grow_nodes)
        t0 = time.perf_counter()
        res = self.policy.expand(tree, nodes, k, sampling if sampling is not None else self.sampling)
        self._tick("policy", t0)
        children = res.children_bt
        B, M = nodes.shape
        lp = torch.full((B, M, k), math.nan)
        if children is None:
            children = torch.full((B, M, k), -1, dtype=torch.int32)
        given = nodes >= 0  # row-major (b, j) order = the policy's node order
        if res.logprob_sum.numel():
            lp[given] = res.logprob_sum.to(torch.float32)
        made = children >= 0
        b_idx = torch.arange(B).view(B, 1, 1).expand(B, M, k)[made]
        pairs = torch.stack([b_idx, children[made].long()], dim=1).view(-1, 2)
        scores = torch.full((pairs.shape[0],), math.nan)
        if score and self.reward is not None and pairs.shape[0]:
            t0 = time.perf_counter()
            scores = self.reward.score(tree, pairs, self.policy).to(torch.float32)
            self._tick("reward", t0)
        self._backup_pairs(tree, pairs, scores)
        return Expansion(children=children, pairs=pairs, scores=scores, logprob_sum=lp)

    def _backup_pairs(self, tree: BatchedTree, pairs: torch.Tensor, scores: torch.Tensor) -> None:
        """Back up (b, n) pairs with their step scores (as values; 0 where unscored)."""
        if pairs.shape[0] == 0:
            return
        B = tree.batch_size
        order = torch.argsort(pairs[:, 0], stable=True)
        p, sc_sorted = pairs[order], scores[order]
        counts = torch.bincount(p[:, 0], minlength=B)
        starts = torch.cumsum(counts, 0) - counts
        rank = torch.arange(p.shape[0]) - starts[p[:, 0]]
        K = int(counts.max())
        nodes = torch.full((B, K), -1, dtype=torch.int32)
        sc = torch.full((B, K), math.nan)
        nodes[p[:, 0], rank] = p[:, 1].to(torch.int32)
        sc[p[:, 0], rank] = sc_sorted
        values = torch.nan_to_num(sc, nan=0.0)
        self.ops.backup(tree, nodes, values, sc, 1.0)

    # -------------------------------------------------------------- reading
    def path_scores(self, tree: BatchedTree) -> torch.Tensor:
        """[B, N] aggregated step scores (ctx.aggregation) of every node's path."""
        return path_scores(tree, self.aggregation)

    def text(self, tree: BatchedTree, b: int, n: int) -> str:
        return self.policy.text(tree, b, n)

    def answer(self, text: str) -> str | None:
        return self.step.extract_answer(text)

    def counters(self) -> dict[str, int]:
        """Compute counters of the policy and the reward model so far (prefixed)."""
        out: dict[str, int] = {}
        for prefix, comp in (("policy", self.policy), ("reward", self.reward)):
            c = getattr(comp, "counters", None)
            if c is not None and hasattr(c, "as_dict"):
                out.update({f"{prefix}_{k}": int(v) for k, v in c.as_dict().items()})
        return out

    def _tick(self, phase: str, t0: float) -> None:
        self.timings[phase] = self.timings.get(phase, 0.0) + time.perf_counter() - t0


def counters_delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    """Per-batch counters from running totals (peaks are kept as they are)."""
    return {k: (v if "peak" in k else v - before.get(k, 0)) for k, v in after.items()}


def run_search(
    search: Any,
    ctx: SearchContext,
    problems: Iterable[Problem],
    results: ResultsFile,
    batch_size: int = 8,
    on_batch: Callable[[list[SearchResult]], None] | None = None,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Search every problem not yet in ``results``, in batches; append each batch's results."""
    todo = [p for p in problems if not results.done(p.id)]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), desc="search", unit="problem", leave=False)
    for i in range(0, len(todo), batch_size):
        batch = todo[i: i + batch_size]
        before = ctx.counters()
        out = search.run(ctx, batch)
        if ctx.export_trees:
            from lrm_engine.export.tree_json import sync_chosen

            for r in out:
                sync_chosen(r)  # the chosen path of the final answer (set after finish)
        delta = counters_delta(ctx.counters(), before)
        per = {k: v // max(len(batch), 1) for k, v in delta.items()}
        recs = []
        for r in out:
            if not r.counters:
                r.counters = dict(per)
            recs.append(result_record(r))
        results.append(recs)
        if on_batch is not None:
            on_batch(out)
        if bar is not None:
            bar.update(len(batch))
    if bar is not None:
        bar.close()
    return results.records()


def result_record(r: SearchResult) -> dict[str, Any]:
    """The JSON record of one problem's result."""
    rec = {
        "id": r.id,
        "answer": r.answer,
        "score": None if r.score is None or math.isnan(r.score) else float(r.score),
        "solution": r.solution,
        "steps": r.steps,
        "candidates": r.candidates,
        "counters": r.counters,
    }
    if r.tree is not None:
        rec["tree"] = r.tree
    return rec
