"""`omegaprm` (Luo et al. 2024, "Improve Mathematical Reasoning in Language Models by Automated
Process Supervision"): find the first wrong step of wrong solutions by binary search over
Monte-Carlo estimates, inside a search tree that keeps and reuses every rollout.

Per problem, a tree of states (state = question + solution prefix; value MC(s) = share of the k
rollouts from s that reach the reference answer, N(s) = visits):

1. k rollouts from the question. MC(root) = 1: one all-correct record; MC(root) = 0: nothing to
   locate (no correct prefix is known), the problem is skipped (counted).
2. Selection: a pool holds every wrong rollout (s, r) from a state with 0 < MC(s) < 1. The
   rollout with the largest  Q(s, r) + U(s)  is taken, with the paper's heuristic
   Q(s, r) = alpha^(1 - MC(s)) * beta^(len(r) / L)  (prefer states that look right and short
   rollouts: a wrong step is likely near)  and  U(s) = c_puct * sqrt(sum_s' N(s')) / (1 + N(s)).
3. Binary search over r's steps: the prefix s + r[:mid+1] gets k rollouts (or reuses its
   estimate if the state was probed before); MC > 0 -> the first error is after mid (and the
   prefix's own wrong rollouts join the pool if MC < 1), MC = 0 -> at or before mid.
   The last step of r needs no rollout (r is wrong). The first error e is where the search ends.
4. Output: the whole solution s + r with labels ``step i good iff i < e`` (Math-Shepherd / PRM800K
   prefix semantics: steps after the first error are wrong too; ``truncate_at_error`` keeps only
   steps 0..e as in the paper); ``soft_labels`` = the measured MC of each prefix (unmeasured good
   steps take the nearest measured good prefix after them), 0 for wrong steps.
5. Repeat 2-4 until ``max_searches`` binary searches or an empty pool.

All problems of a batch advance in lockstep: every round, each problem asks for at most one
probe and all probes of the batch are one rollout batch on the tree engine (:func:`probe`).
Records: TRL PRM ``{"prompt", "completions", "labels"}`` plus ``soft_labels``, ``first_error``,
``rollouts`` (spent on the problem so far), ``id`` = ``<problem id>#<j>``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

from lrm_engine.core.interfaces import Example

from .common import GroupedAnnotator, Rollout, mc_value, probe, sampling_config


@dataclass
class _State:
    ex: Example
    mc: dict = field(default_factory=dict)  # prefix -> MC
    visits: dict = field(default_factory=dict)  # prefix -> N
    pool: list = field(default_factory=list)  # (prefix, rollout steps)
    records: list = field(default_factory=list)
    searches: int = 0
    rollouts: int = 0
    # current binary search: [prefix s, rollout r, left, right] or None
    search: list | None = None
    pending: tuple | None = None  # prefix awaiting a probe
    phase: str = "root"  # root | select | search | done
    status: str = "ok"
    correct_solution: tuple | None = None
    # full solutions already in the pool or searched (one label record per solution)
    seen: set = field(default_factory=set)


@dataclass
class OmegaPRMAnnotator(GroupedAnnotator):
    """OmegaPRM: binary search for the first wrong step with MC estimates (module docstring)."""

    # Rollouts per probed state (k).
    num_rollouts: int = 8
    # Binary searches per problem (each labels one wrong solution).
    max_searches: int = 2
    # Q(s, r) = alpha^(1 - MC(s)) * beta^(len(r) / L).
    alpha: float = 0.5
    # See alpha.
    beta: float = 0.9
    # L: rollout length normaliser, in characters.
    length_scale: float = 500.0
    # Exploration constant of U(s).
    c_puct: float = 0.125
    # Keep steps 0..first error only (the paper); False labels the whole solution.
    truncate_at_error: bool = False
    # Also write one all-correct solution per problem (when a correct rollout was drawn).
    include_correct: bool = True
    # Sampling temperature of the rollouts.
    temperature: float = 1.0
    # Sampling seed.
    seed: int = 0
    name: str = "omegaprm"
    input_file: str | None = None

    output_format = "prm"
    output_file = "prm.jsonl"
    needs_reference = True

    def __post_init__(self) -> None:
        if self.num_rollouts < 1:
            raise ValueError("annotate.num_rollouts must be >= 1")
        if self.max_searches < 0:
            raise ValueError("annotate.max_searches must be >= 0")

    # ------------------------------------------------------------------ the heuristic
    def q_value(self, mc: float, rollout_steps: Sequence[str]) -> float:
        length = sum(len(s) + 1 for s in rollout_steps)
        return self.alpha ** (1.0 - mc) * self.beta ** (length / self.length_scale)

    def u_value(self, st: _State, prefix: tuple) -> float:
        total = sum(st.visits.values())
        return self.c_puct * math.sqrt(total) / (1.0 + st.visits.get(prefix, 0))

    def select(self, st: _State):
        """Pop and return the pool entry with the largest Q + U (ties: oldest first)."""
        best, best_v = None, -math.inf
        for i, (s, r) in enumerate(st.pool):
            v = self.q_value(st.mc[s], r) + self.u_value(st, s)
            if v > best_v:
                best, best_v = i, v
        return st.pool.pop(best)

    # ------------------------------------------------------------------ the state machine
    def _absorb(self, st: _State, prefix: tuple, rollouts: list[Rollout]) -> None:
        """Record a probe's result: MC(prefix), wrong rollouts into the pool."""
        good = [r for r in rollouts if not r.empty]
        n_ok = sum(r.correct for r in rollouts)
        mc = n_ok / len(rollouts) if rollouts else 0.0
        st.mc[prefix] = mc
        st.rollouts += len(rollouts)
        if st.correct_solution is None:
            for r in good:
                if r.correct and r.finished:
                    st.correct_solution = prefix + r.steps
                    break
        if 0.0 < mc < 1.0:
            for r in good:
                if not r.correct and r.steps and prefix + r.steps not in st.seen:
                    st.seen.add(prefix + r.steps)
                    st.pool.append((prefix, r.steps))

    def _advance(self, st: _State) -> None:
        """Move the problem on until it needs a probe (st.pending) or is done."""
        while st.pending is None and st.phase != "done":
            if st.phase == "select":
                if st.searches >= self.max_searches or not st.pool:
                    st.phase = "done"
                    break
                s, r = self.select(st)
                st.visits[s] = st.visits.get(s, 0) + 1
                st.search = [s, r, 0, len(r) - 2]
                st.phase = "search"
            if st.phase == "search":
                s, r, left, right = st.search
                if left > right:
                    self._finish_search(st)
                    st.phase = "select"
                    continue
                mid = (left + right) // 2
                prefix = s + r[: mid + 1]
                if prefix in st.mc:  # reuse an earlier estimate of this state
                    self._step_search(st, st.mc[prefix])
                    continue
                st.pending = prefix

    def _step_search(self, st: _State, mc: float) -> None:
        s, r, left, right = st.search
        mid = (left + right) // 2
        prefix = s + r[: mid + 1]
        st.visits[prefix] = st.visits.get(prefix, 0) + 1
        if mc > 0:
            st.search = [prefix, r[mid + 1:], 0, right - mid - 1]  # rebased on the good prefix
        else:
            st.search = [s, r, left, mid - 1]

    def _finish_search(self, st: _State) -> None:
        s, r, left, _ = st.search
        st.search = None
        st.searches += 1
        steps = s + r
        e = len(s) + left  # first wrong step
        labels = [i < e for i in range(len(steps))]
        soft = []
        for i in range(len(steps)):
            if i >= e:
                soft.append(0.0)
                continue
            val = None
            for j in range(i, e):  # the nearest measured good prefix at or after step i
                if steps[: j + 1] in st.mc:
                    val = st.mc[steps[: j + 1]]
                    break
            soft.append(1.0 if val is None else float(val))
        if self.truncate_at_error:
            steps, labels, soft = steps[: e + 1], labels[: e + 1], soft[: e + 1]
        st.records.append({"completions": list(steps), "labels": labels, "soft_labels": soft,
                           "first_error": e})

    # ------------------------------------------------------------------ batch
    def annotate_batch(self, ctx, examples: Sequence[Example], grade):
        stats = self.stats
        sampling = sampling_config(self.temperature, self.seed)
        states = [_State(ex) for ex in examples]
        for st in states:
            st.pending = ()
        for _ in range(10_000):
            asking = [st for st in states if st.pending is not None]
            if not asking:
                break
            res = probe(ctx, [(st.ex, st.pending) for st in asking], (self.num_rollouts,), grade,
                        stats, sampling)
            for st, cands in zip(asking, res):
                prefix, st.pending = st.pending, None
                rollouts = [r for c in cands for r in c.rollouts]
                self._absorb(st, prefix, rollouts)
                if st.phase == "root":
                    ok, n = mc_value(cands)
                    if n == 0 or ok == 0:
                        st.status = "no_correct_rollout" if n else "no_rollout"
                        st.phase = "done"
                    else:
                        st.visits[()] = 1
                        st.phase = "select"
                else:
                    self._step_search(st, st.mc[prefix])
                self._advance(st)
        out = []
        for st in states:
            pid = st.ex.problem.id
            prompt = ctx.prompt(st.ex.problem)
            recs = list(st.records)
            if self.include_correct and st.correct_solution:
                sol = st.correct_solution
                soft = [float(st.mc.get(sol[: i + 1], 1.0)) for i in range(len(sol))]
                soft[-1] = 1.0
                recs.append({"completions": list(sol), "labels": [True] * len(sol),
                             "soft_labels": soft, "first_error": -1})
            final = []
            for j, r in enumerate(recs):
                final.append({"id": f"{pid}#{j}", "prompt": prompt, **r, "rollouts": st.rollouts})
            status = "ok" if final else (st.status if st.status != "ok" else "nothing_to_label")
            stats.add("searches", st.searches)
            out.append((pid, final, status))
        return out
