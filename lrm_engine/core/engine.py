"""The engine's one loop: problems -> BatchedTree -> Policy.expand -> RewardModel.score -> search.

`SearchContext` is what a search algorithm gets: the policy, the reward model (optional), the
step convention and prompt format of the task (never its references), the kernel backend and
the step-score aggregation. Its `expand` is the only way searches grow trees, so every
iteration is one batched policy call plus one batched reward call for all problems of a batch.

`run_search` drives a dataset through a search in batches and appends per-problem results to
results.jsonl as each batch finishes (resumable: finished ids are skipped on restart).

Reproducibility: every tree's root sampling key comes from ``(seed, problem id)``
(lrm_engine/core/rng.py), so a problem's samples are the same whatever the batch size, the other
problems of its batch, or a resume.

Per-problem counters: components that split their counts by tree (``ComputeCounters.per_tree``:
the hf / tree policies and the incremental PRMs) give every record its exact share of
``PER_TREE`` counters; peaks (``*_peak``) are the batch's maximum; any other count (evictions,
or every count of a component that does not split them) is apportioned over the batch's
problems so that the records sum to the run's total.

Non-finite step scores: a NaN or +-inf score from the reward model is counted
(``reward_nonfinite_scores``) and replaced by 0.0 — the lowest probability a PRM can give — so a
step the reward model could not score is never preferred to one it scored. A reward model that
only scores finished solutions (``scores_steps = False``, e.g. the ORM) is given only the
terminal nodes; searches that rank unfinished paths (``uses_step_scores = True``) refuse it.
"""

from __future__ import annotations

import math
import time
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import torch

from lrm_engine.core.aggregate import check_aggregation, path_scores
from lrm_engine.core.interfaces import Problem, SearchResult, StepConvention
from lrm_engine.core.results import ResultsFile
from lrm_engine.core.rng import problem_keys
from lrm_engine.core.tree import BatchedTree
from lrm_engine.errors import UserError
from lrm_engine.models.counters import PER_TREE


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
    # runtime.seed: with each problem's id, the root key of its sampling stream (core/rng.py).
    seed: int = 0
    timings: dict[str, float] = field(default_factory=dict)
    # Exact per-problem shares of the PER_TREE counters, accumulated call by call:
    # {problem id: {"policy_tokens_computed": ..., ...}} (popped by run_search per record).
    problem_counters: dict[str, dict[str, int]] = field(default_factory=dict)
    # Non-finite step scores the reward model returned (replaced by 0.0; see the module doc).
    nonfinite_scores: int = 0
    # The current batch's peak resident KV bytes ({"policy_bytes_resident_peak": ...}).
    batch_peaks: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_aggregation(self.aggregation)
        # id(tree) -> the problem ids of its rows (start_tree); dropped with the tree.
        self._tree_ids: dict[int, list[str]] = {}
        # Components ("policy", "reward") whose calls split their counts by tree.
        self._split: set[str] = set()
        # Rewards that need Example.reference (the verifier) have no place inside search.
        from lrm_engine.rewards.verifier import refuse_reference_rewards

        refuse_reference_rewards(self.reward)
        if self.ops is None:
            from lrm_engine.ops import get_backend

            self.ops = get_backend("auto")

    # -------------------------------------------------------------- trees
    def new_tree(self, problems: Sequence[Problem], num_actions: int, capacity: int) -> BatchedTree:
        """One tree per problem, roots encoded by the policy, root keys from (seed, problem id)."""
        tree = BatchedTree.empty(len(problems), max(capacity, 2), num_actions)
        # A problem's id names its stream (a bare prompt string names its own).
        self.start_tree(tree, [str(getattr(p, "id", p)) for p in problems])
        t0 = time.perf_counter()
        call = self.policy.init_roots(tree, [self.prompt(p) for p in problems])
        self._tick("policy", t0)
        self._attribute(tree, "policy", call)
        self._peak("policy", call)
        # Root visit = 1, so visits(n) = 1 + sum(children) holds for every backed-up node.
        root = torch.zeros((tree.batch_size, 1), dtype=torch.int32)
        self.ops.backup(tree, root, torch.zeros((tree.batch_size, 1)), None, 1.0)
        return tree

    def start_tree(self, tree: BatchedTree, ids: Sequence[str], count: bool = True) -> None:
        """Tie tree b to the string ids[b]: its root sampling key is (seed, ids[b]) and, with
        ``count``, its per-tree counts go to problem ids[b]'s counters.

        ``new_tree`` does it with the problem ids; code that builds trees otherwise (a tree per
        rewrite prompt, per annotated prefix) calls it before ``policy.init_roots`` with ids
        that name what the tree is for (e.g. ``f"{problem id}|rewrite|{j}"``, ``count=False``).
        """
        ids = [str(i) for i in ids]
        tree.rng_key[:, BatchedTree.ROOT] = problem_keys(self.seed, ids).to(tree.rng_key.device)
        if count:
            self._tree_ids[id(tree)] = ids
            weakref.finalize(tree, self._tree_ids.pop, id(tree), None)

    def _attribute(self, tree: BatchedTree, prefix: str, call: Any) -> None:
        """Add a call's per-tree counts (``call.per_tree``) to each problem's counters."""
        tally = getattr(call, "per_tree", None)
        ids = self._tree_ids.get(id(tree))
        if tally is None or ids is None or len(ids) != tree.batch_size:
            return
        self._split.add(prefix)
        for name, t in tally.counts.items():
            key = f"{prefix}_{name}"
            for pid, v in zip(ids, t.tolist()):
                if v:
                    d = self.problem_counters.setdefault(pid, {})
                    d[key] = d.get(key, 0) + int(v)

    def _peak(self, prefix: str, call: Any) -> None:
        """Track the batch's peak resident KV bytes from a call's counters."""
        v = getattr(call, "bytes_resident_peak", None)
        if v is not None:
            key = f"{prefix}_bytes_resident_peak"
            self.batch_peaks[key] = max(self.batch_peaks.get(key, 0), int(v))

    def record_counters(self, problems: Sequence[Problem], delta: dict[str, int]) -> dict[str, dict[str, int]]:
        """Each problem's counters for a batch whose running-total difference is ``delta``.

        Exact shares where the component split them by tree, the batch's peaks, and the rest
        apportioned (see the module doc). Pops the batch's per-problem tallies.
        """
        ids = [str(p.id) for p in problems]
        exact = self.attributed()
        own = [self.problem_counters.pop(i, {}) for i in ids]
        out: dict[str, dict[str, int]] = {i: {} for i in ids}
        for key, total in delta.items():
            if "peak" in key:
                vals = [self.batch_peaks.get(key, total)] * len(ids)
            elif key in exact:
                vals = [o.get(key, 0) for o in own]
            else:
                vals = apportion(total, len(ids))
            for i, v in zip(ids, vals):
                out[i][key] = int(v)
        self.batch_peaks = {}
        return out

    def attributed(self) -> set[str]:
        """Counter names (prefixed) whose per-problem shares are exact (split by tree)."""
        return {f"{prefix}_{n}" for prefix in self._split for n in PER_TREE}

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
        call = getattr(res, "counters", None)
        self._attribute(tree, "policy", call)
        self._peak("policy", call)
        scores = torch.full((pairs.shape[0],), math.nan)
        if score and self.reward is not None and pairs.shape[0]:
            scores = self._score(tree, pairs)
        self._backup_pairs(tree, pairs, scores)
        return Expansion(children=children, pairs=pairs, scores=scores, logprob_sum=lp)

    def _score(self, tree: BatchedTree, pairs: torch.Tensor) -> torch.Tensor:
        """Reward scores [P] of the created children (NaN = not scored; see the module doc)."""
        scores = torch.full((pairs.shape[0],), math.nan)
        sel = torch.ones(pairs.shape[0], dtype=torch.bool)
        if not getattr(self.reward, "scores_steps", True):
            sel = tree.terminal[pairs[:, 0], pairs[:, 1]].to(torch.bool)
        if not bool(sel.any()):
            return scores
        t0 = time.perf_counter()
        got = self.reward.score(tree, pairs[sel], self.policy).to(torch.float32).reshape(-1)
        self._tick("reward", t0)
        self._attribute(tree, "reward", getattr(self.reward, "last_counters", None))
        self._peak("reward", getattr(self.reward, "last_counters", None))
        bad = ~torch.isfinite(got)
        if bool(bad.any()):
            self.nonfinite_scores += int(bad.sum())
            got = torch.where(bad, torch.zeros_like(got), got)
        scores[sel] = got
        return scores

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
            verdicts = getattr(comp, "counters_judge", None)  # LLM-as-judge verdict counts
            if isinstance(verdicts, dict):
                out.update({f"{prefix}_judge_{k}": int(v) for k, v in verdicts.items()})
        out["reward_nonfinite_scores"] = int(self.nonfinite_scores)
        return out

    def _tick(self, phase: str, t0: float) -> None:
        self.timings[phase] = self.timings.get(phase, 0.0) + time.perf_counter() - t0


def counters_delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    """Per-batch counters from running totals (peaks are kept as they are)."""
    return {k: (v if "peak" in k else v - before.get(k, 0)) for k, v in after.items()}


def apportion(total: int, n: int) -> list[int]:
    """``total`` split over n parts as evenly as integers allow, summing to ``total``."""
    base, extra = divmod(int(total), n)
    return [base + (1 if i < extra else 0) for i in range(n)]


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
    check_reward_fits(search, ctx.reward)
    todo = [p for p in problems if not results.done(p.id)]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), desc="search", unit="problem", leave=False)
    for i in range(0, len(todo), batch_size):
        batch = todo[i: i + batch_size]
        ctx.batch_peaks = {}
        before = ctx.counters()
        out = search.run(ctx, batch)
        if ctx.export_trees:
            from lrm_engine.export.tree_json import sync_chosen

            for r in out:
                sync_chosen(r)  # the chosen path of the final answer (set after finish)
        shares = ctx.record_counters(batch, counters_delta(ctx.counters(), before))
        recs = []
        for r in out:
            if not r.counters:
                r.counters = shares.get(str(r.id), {})
            recs.append(result_record(r))
        results.append(recs)
        if on_batch is not None:
            on_batch(out)
        if bar is not None:
            bar.update(len(batch))
    if bar is not None:
        bar.close()
    return results.records()


def check_reward_fits(search: Any, reward: Any) -> None:
    """Refuse a search that ranks unfinished paths with a reward that scores only solutions."""
    if reward is None or getattr(reward, "scores_steps", True):
        return
    if getattr(search, "uses_step_scores", False):
        name = getattr(search, "name", type(search).__name__)
        rname = getattr(reward, "name", type(reward).__name__)
        raise UserError(
            f"search={name} ranks unfinished reasoning paths by their step scores, but "
            f"reward={rname} scores only finished solutions; use a process reward model "
            f"(reward=prm_token, prm_head, value_head) or a search that scores whole solutions "
            f"(search=best_of_n)")


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
