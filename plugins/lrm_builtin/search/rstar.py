"""`rstar`: rStar (Qi et al. 2024, "Mutual Reasoning Makes Smaller LLMs Stronger Problem-Solvers").

MCTS whose actions are five human-like reasoning actions, each a prompt template applied to the
policy (the template is a suffix written after the task prompt and the trajectory so far; it
becomes part of the step the action adds, and the policy stops at the task's step delimiter or at
the end of a solution):

- ``A1`` one next step;
- ``A2`` all remaining steps (to the end of a solution);
- ``A3`` a sub-question and its answer (two steps);
- ``A4`` re-answer the sub-question (only under an ``A3`` node: its answer step is rewritten);
- ``A5`` rephrase the question (only at the root).

``search.actions`` picks which are offered (in that order: the tree's action slots) and
``search.templates`` holds their prompt suffixes.

The statistics live in a :class:`BatchedTree` (one slot per rStar node, one action slot per
configured action) and go through the engine's ops: each rollout is ``ctx.ops.select``
(``rule=uct``, UCB1 with ``uct_c``; actions an rStar node may not take have an invalid prior),
then expansion of the selected (node, action) and a simulation that keeps taking a random valid
action (uniform, from the counter-based key of ``(seed, problem id, rollout, depth)``) until a
terminal node; each simulation step is one batched policy call for all problems. The nodes made by
the simulation stay in the tree. Terminal-answer reward, no PRM (as in the paper): a terminal's
reward is the share of the tree's terminal nodes so far whose answer equals its answer
(self-consistency over the rollouts' answers; 0 without an answer); ``ctx.ops.backup`` backs it up
root-ward with one visit.

Discriminator (mutual consistency; ``discriminate=true``): for every terminal trajectory with an
answer, a random step i (``mask_low`` <= i / steps < ``mask_high``, from the key of
``(seed, problem id, node)``) masks the steps from i on; the discriminator (``discriminator``: a
model folder, null = the same policy) completes the prefix; the trajectory is *consistent* when
the completion's answer equals its own. The final answer is the consistent trajectory with the
highest terminal reward at the end of the search (its answer's share of all the tree's terminal
nodes; ties: the higher MCTS value Q = value_sum / visits, then created first); with no
consistent trajectory, the best of all of them. All completions of a batch are one batched
generation. Candidates record ``score`` (that reward), ``q``, ``visits``, ``actions``,
``masked_from``, ``completion_answer`` and ``consistent``.

Compute: every action and every completion is a fresh prompted chain (its prompt is encoded
again, as the paper's implementation does; the policy's prefix cache may reuse part of it:
``policy_tokens_reused``). A separate discriminator model's tokens are added to the records'
``policy_*`` counts (per problem), not to the run's policy counters.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from typing import Optional, Sequence

import torch

from lrm_builtin.search.chains import generate_chains
from lrm_builtin.search.errors import SettingError
from lrm_builtin.search.rstar_actions import ACTIONS, DEFAULT_TEMPLATES
from lrm_engine.core.interfaces import SearchResult
from lrm_engine.core.rng import mix, problem_keys, uniform
from lrm_engine.core.tree import BatchedTree


def _check_actions(actions: Sequence[str], templates: dict) -> None:
    bad = [a for a in actions if a not in ACTIONS]
    if bad or not actions or len(set(actions)) != len(actions):
        raise SettingError(f"search.actions={list(actions)!r}: a non-empty list of distinct actions "
                         f"among {', '.join(ACTIONS)}")
    if "A4" in actions and "A3" not in actions:
        raise SettingError("search.actions: A4 (re-answer the sub-question) needs A3 in the list")
    unknown = sorted(set(templates) - set(ACTIONS))
    if unknown:
        raise SettingError(f"search.templates: unknown action(s) {unknown}; keys are {', '.join(ACTIONS)}")


@dataclasses.dataclass
class _Node:
    """Text side of one rStar node (the statistics are in the BatchedTree slot of the same index)."""

    # Trajectory after the task prompt (steps joined by the delimiter).
    traj: str
    # Action that made it ("" for the root).
    action: str
    # Its final answer (terminal nodes only; None = none).
    answer: Optional[str] = None
    # For an A3 node: the trajectory up to and including the sub-question (what A4 re-answers).
    subq: str = ""


class RStarSearch:
    """rStar: MCTS over five prompted reasoning actions + mutual-consistency discriminator."""

    name = "rstar"
    # Terminal-answer rewards: no PRM is used (a reward model, when given, is ignored).
    uses_step_scores = False

    def __init__(self, rollouts: int = 16, actions: Sequence[str] = ACTIONS,
                 templates: Optional[dict] = None, uct_c: float = 1.4, max_depth: int = 5,
                 discriminate: bool = True, discriminator: Optional[str] = None,
                 mask_low: float = 0.2, mask_high: float = 0.8, name: str = "rstar"):
        self.templates = dict(DEFAULT_TEMPLATES)
        self.templates.update(dict(templates or {}))
        self.actions = tuple(str(a) for a in actions)
        _check_actions(self.actions, dict(templates or {}))
        if rollouts < 1 or max_depth < 1:
            raise SettingError("search.rollouts and search.max_depth must be >= 1")
        if not 0.0 <= mask_low <= mask_high <= 1.0:
            raise SettingError(f"search.mask_low={mask_low}, search.mask_high={mask_high}: "
                               f"need 0 <= mask_low <= mask_high <= 1")
        self.rollouts, self.uct_c, self.max_depth = rollouts, uct_c, max_depth
        self.discriminate, self.discriminator_path = discriminate, discriminator
        self.mask_low, self.mask_high = mask_low, mask_high
        self._disc_policy = None

    # ------------------------------------------------------------------ actions
    def _valid(self, node: _Node, depth: int, steps: int, max_steps: int, terminal: bool) -> list[bool]:
        """Which configured actions an rStar node may take."""
        out = []
        for a in self.actions:
            ok = not terminal and depth < self.max_depth and steps < max_steps
            if a == "A4":
                ok = ok and node.action == "A3"
            elif a == "A5":
                ok = ok and depth == 0
            elif a == "A3":
                ok = ok and steps + 2 <= max_steps
            out.append(ok)
        return out

    def _priors(self, valid: list[bool]) -> torch.Tensor:
        n = max(1, sum(valid))
        return torch.tensor([1.0 / n if v else BatchedTree.INVALID_PRIOR for v in valid])

    def _context(self, node: _Node, action: str) -> tuple[str, int]:
        """(text after the task prompt that the policy continues, steps it may write) of
        ``action`` at ``node``; that text is also the start of the new node's trajectory."""
        suffix = self.templates.get(action, "")
        if action == "A4":  # re-answer: replace the A3 node's answer step
            return node.subq + suffix, 1
        return node.traj + suffix, {"A1": 1, "A2": 10**6, "A3": 2, "A5": 1}[action]

    # ------------------------------------------------------------------ the search
    def run(self, ctx, problems):
        B = len(problems)
        A = len(self.actions)
        ids = [str(p.id) for p in problems]
        base = [ctx.prompt(p) for p in problems]
        base = [b if isinstance(b, str) else p.question for b, p in zip(base, problems)]
        tree = BatchedTree.empty(B, 2 + self.rollouts * (self.max_depth + 1), A)
        nodes: list[list[_Node]] = [[_Node(traj="", action="")] for _ in range(B)]
        steps_of = [[0] for _ in range(B)]
        tree.children_prior[:, BatchedTree.ROOT] = self._priors(
            self._valid(nodes[0][0], 0, 0, ctx.max_steps, False))[None, :]
        ctx.ops.backup(tree, torch.zeros((B, 1), dtype=torch.int32), torch.zeros((B, 1)), None, 1.0)
        answers: list[Counter] = [Counter() for _ in range(B)]
        terminals = [0] * B
        keys = problem_keys(ctx.seed, [f"{i}|rstar" for i in ids])
        ar = torch.arange(B)
        for it in range(self.rollouts):
            ln, la = ctx.ops.select(tree, 1, rule="uct", uct_c=self.uct_c, virtual_loss=0.0)
            node, act = ln[:, 0].long(), la[:, 0].long()
            end = torch.where(act < 0, node, -1)
            for depth in range(self.max_depth + 1):
                active = (act >= 0) & (node >= 0)
                if not bool(active.any()):
                    break
                child = self._expand(ctx, tree, nodes, steps_of, answers, terminals, base, ids, node, act,
                                     active)
                end = torch.where(active, child, end)
                # Simulation: a uniformly random valid action of the new node.
                pri = tree.children_prior[ar, child.clamp_min(0)]  # [B, A]
                valid = (pri >= 0) & active[:, None]
                u = uniform(mix(mix(keys, it), depth))
                cnt = valid.sum(-1)
                pick = (u * cnt.clamp_min(1)).long().clamp_max((cnt - 1).clamp_min(0))
                rank = torch.cumsum(valid.long(), -1) - 1
                chosen = ((rank == pick[:, None]) & valid).long().argmax(-1)
                node = torch.where(active, child, node)
                act = torch.where(active & (cnt > 0), chosen, -1)
            reward = torch.zeros(B)
            for b in range(B):
                e = int(end[b])
                if e >= 0:
                    a = nodes[b][e].answer
                    reward[b] = answers[b][a] / max(terminals[b], 1) if a is not None else 0.0
            ctx.ops.backup(tree, end[:, None].to(torch.int32).contiguous(), reward[:, None].contiguous(), None, 1.0)
        return self._answer(ctx, tree, nodes, answers, terminals, problems, base, ids)

    def _expand(self, ctx, tree, nodes, steps_of, answers, terminals, base, ids, node, act, active):
        """Create the children (node, act) of the active trees: one batched generation."""
        rows = active.nonzero().squeeze(1).tolist()
        delim = ctx.step.delimiter
        prompts, limits, streams, kept = [], [], [], []
        for b in rows:
            n, a = int(node[b]), self.actions[int(act[b])]
            keep, s = self._context(nodes[b][n], a)
            used = steps_of[b][n] - (1 if a == "A4" else 0)
            prompts.append(base[b] + keep)
            limits.append(min(s, max(1, ctx.max_steps - used)))
            streams.append(f"{ids[b]}|rstar|{n}|{a}")
            kept.append((keep, used))
        chains = generate_chains(ctx, prompts, limits, streams, [ids[b] for b in rows])
        B, A = tree.batch_size, tree.num_actions
        leaf = torch.where(active, node, -1)[:, None].to(torch.int32)
        la = torch.where(active, act, -1)[:, None].to(torch.int32)
        prior = torch.full((B, 1, A), BatchedTree.INVALID_PRIOR)
        term = torch.zeros((B, 1), dtype=torch.bool)
        new_nodes = {}
        for (b, ch, (keep, used), lim) in zip(rows, chains, kept, limits):
            n, a = int(node[b]), self.actions[int(act[b])]
            traj = keep + ch.text
            steps = len(ctx.step.split_steps(traj))
            depth = int(tree.depth[b, n]) + 1
            rec = _Node(traj=traj, action=a)
            if a == "A3":  # the sub-question is the first step written
                first = ch.text.split(delim, 1)[0] + delim if ch.text else ""
                rec.subq = keep + first
            # The solution ended: it has a final answer, or the policy stopped before the steps
            # the action asked for (an end of text without an answer: a dead end).
            done = ctx.answer(traj) is not None or (ch.finished and ch.steps < lim)
            valid = self._valid(rec, depth, steps, ctx.max_steps, done)
            dead = not any(valid)
            prior[b, 0] = self._priors(valid)
            term[b, 0] = done or dead
            if term[b, 0]:
                rec.answer = ctx.answer(traj) if done else None
            new_nodes[b] = (rec, steps)
        tree.ensure_capacity(1, grow=True)
        made = ctx.ops.expand(tree, leaf, la, prior, term)[:, 0].long()
        for b, (rec, steps) in new_nodes.items():
            c = int(made[b])
            assert c == len(nodes[b]), "rstar: node slots and texts out of step"
            nodes[b].append(rec)
            steps_of[b].append(steps)
            if bool(term[b, 0]):
                terminals[b] += 1
                if rec.answer is not None:
                    answers[b][rec.answer] += 1
        return torch.where(active, made, -1)

    # ------------------------------------------------------------------ discriminator + answer
    def _disc_ctx(self, ctx):
        if self.discriminator_path is None:
            return ctx
        if not isinstance(self.discriminator_path, str):  # a Policy passed in (Python embedding)
            self._disc_policy = self.discriminator_path
        if self._disc_policy is None:
            from lrm_builtin.policies import make_tree_policy

            self._disc_policy = make_tree_policy(path=self.discriminator_path)
            if callable(getattr(self._disc_policy, "configure", None)):
                self._disc_policy.configure(step=ctx.step)
        return dataclasses.replace(ctx, policy=self._disc_policy, reward=None)

    def _answer(self, ctx, tree, nodes, answers, terminals, problems, base, ids):
        B = tree.batch_size
        q = tree.node_value()
        cands: list[list[dict]] = [[] for _ in range(B)]
        jobs = []
        for b in range(B):
            for n, rec in enumerate(nodes[b]):
                if not bool(tree.terminal[b, n]) or rec.answer is None:
                    continue
                steps = ctx.step.split_steps(rec.traj)
                share = answers[b][rec.answer] / max(terminals[b], 1)
                cands[b].append({"answer": rec.answer, "score": share, "q": float(q[b, n]), "text": rec.traj,
                                 "node": n, "visits": int(tree.visit_count[b, n]),
                                 "actions": self._actions_path(tree, b, n)})
                if self.discriminate:
                    key = problem_keys(ctx.seed, [f"{ids[b]}|rstar-mask|{n}"])
                    r = self.mask_low + (self.mask_high - self.mask_low) * float(uniform(key)[0])
                    i = min(int(r * len(steps)), max(len(steps) - 1, 0))
                    cands[b][-1]["masked_from"] = i
                    jobs.append((b, len(cands[b]) - 1, ctx.step.join_steps(steps[:i]), len(steps) - i))
        if jobs:
            dctx = self._disc_ctx(ctx)
            done = generate_chains(dctx, [base[b] + pre for b, _, pre, _ in jobs],
                                   [max(1, ctx.max_steps - len(ctx.step.split_steps(pre))) for _, _, pre, _ in jobs],
                                   [f"{ids[b]}|rstar-disc|{cands[b][j]['node']}" for b, j, _, _ in jobs],
                                   [ids[b] for b, _, _, _ in jobs])
            for (b, j, pre, _), ch in zip(jobs, done):
                got = ctx.answer(pre + ch.text)
                cands[b][j]["completion_answer"] = got
                cands[b][j]["consistent"] = got == cands[b][j]["answer"]
        out = []
        for b, prob in enumerate(problems):
            pool = [c for c in cands[b] if c.get("consistent")] if self.discriminate else []
            pool = pool or cands[b]
            if pool:
                best = max(range(len(pool)), key=lambda j: (pool[j]["score"], pool[j]["q"], -j))
                c = pool[best]
                out.append(SearchResult(id=prob.id, answer=c["answer"], solution=c["text"],
                                        score=c["score"], steps=ctx.step.split_steps(c["text"]),
                                        candidates=cands[b]))
            else:
                out.append(SearchResult(id=prob.id, answer=None, solution="", score=math.nan,
                                        steps=[], candidates=[]))
        return out

    def _actions_path(self, tree, b: int, n: int) -> list[str]:
        path = []
        while n > 0:
            path.append(self.actions[int(tree.action_from_parent[b, n])])
            n = int(tree.parent[b, n])
        return path[::-1]
