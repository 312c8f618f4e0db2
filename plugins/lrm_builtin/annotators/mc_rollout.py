"""`mc_rollout` (Math-Shepherd): label each step of a policy solution by Monte-Carlo rollouts.

For every problem, one solution is sampled step by step; from each step prefix s1..si, N
completions are drawn and graded against the reference: soft label = fraction that reach the
correct answer, hard label = any of them does (Math-Shepherd's SE and HE estimators).

Everything runs on the tree engine, so shared prefixes are computed once: the chain node c_i
is expanded once with N children — child 0 continues the solution (and its final answer counts
as one of c_i's completions), children 1..N-1 start rollouts that grow one step per iteration.
One policy call per iteration for the chain nodes of all problems, one for all open rollouts.

Output: TRL-compatible PRM records ``{"prompt", "completions", "labels"}`` plus ``soft_labels``,
``id`` and ``answer_correct``, appended per batch to a JSONL file (resumable by id).

A separate completer (Math-Shepherd's own setup: the generator writes the solutions, a
completer finishes them). ``annotate(..., completer=ctx2)`` samples the solution with ``ctx``'s
policy and draws the N completions of every step prefix with ``ctx2``'s (e.g. a stronger or
better-trained model with the same step convention): each prefix becomes one root of the
completer's tree (``prompt + steps[:i]``), expanded N times and grown one step per iteration,
one completer call per iteration for all prefixes of the batch. Soft label = the fraction of the
N completions that reach the answer (the solution's own answer is not counted: the completer did
not write it); the final step is labelled by its own answer. A weak policy as its own completer
labels correct steps bad whenever it cannot finish them (false negatives); a stronger completer
makes the labels close to exact.

``emit_rollouts=True`` also writes every distinct rollout that reached the correct answer as a
record of its own (``id`` = ``<problem id>#r<k>``, ``source: "rollout"``): its path from the
root, every step labelled good. That is the hard estimate exactly — each of its prefixes has a
completion (the rollout itself) that reaches the answer — so the rollouts Math-Shepherd draws
anyway become verified training solutions instead of being thrown away. Soft labels: the
solution's own estimate on the steps shared with it, 1.0 after (one completion, correct).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from lrm_engine.core.interfaces import Example
from lrm_engine.core.results import ResultsFile


@dataclass
class MCRolloutAnnotator:
    """Math-Shepherd process annotation by N rollouts per step prefix."""

    # Completions per step prefix (N).
    num_rollouts: int = 4
    # Sampling temperature of the solution and of the rollouts.
    temperature: float = 1.0
    # Sampling seed.
    seed: int = 0
    # Also write each distinct correct rollout as an all-good record (see the module docstring).
    emit_rollouts: bool = False
    # Local model folder of a separate completer (None: the policy completes its own solutions).
    completer: str | None = None
    name: str = "mc_rollout"

    def __post_init__(self) -> None:
        if self.num_rollouts < 1:
            raise ValueError("annotate.num_rollouts must be >= 1")

    def annotate_batch(self, ctx, examples: Sequence[Example], grade: Callable[[Example, str], bool],
                       completer=None) -> list[dict]:
        """Label one batch of examples; returns one PRM record per example (plus the rollout
        records with ``emit_rollouts``). ``completer``: a SearchContext whose policy draws the
        completions (None: ``ctx``'s policy, sharing the solution's prefixes in one tree)."""
        if completer is not None:
            return self._annotate_with_completer(ctx, completer, examples, grade)
        from lrm_engine.models.sampling import SamplingConfig

        N = self.num_rollouts
        sampling = SamplingConfig(temperature=self.temperature, seed=self.seed)
        problems = [ex.problem for ex in examples]
        T = ctx.max_steps
        tree = ctx.new_tree(problems, num_actions=N, capacity=1 + N * T * (T + 1) + N)
        B = tree.batch_size
        ar = torch.arange(B)
        # The solution's first step (the root's own rollouts would label nothing).
        first = ctx.expand(tree, torch.zeros((B, 1), dtype=torch.int32), 1, sampling, score=False)
        chain = first.children[:, 0, 0].clone()  # current chain node per tree
        rollouts = torch.full((B, 0), -1, dtype=torch.int32)
        chain_open = ~tree.terminal[ar, chain.long()]
        for _ in range(2 * T):
            if bool(chain_open.any()):
                exp = ctx.expand(tree, torch.where(chain_open, chain, -1)[:, None], N, sampling, score=False)
                kids = exp.children[:, 0, :]  # [B, N]: child 0 continues the chain
                new_roll = torch.where(chain_open[:, None], kids[:, 1:], -1)
                chain = torch.where(chain_open, kids[:, 0], chain)
                done = tree.terminal[ar, chain.long()] | (tree.depth[ar, chain.long()] >= T)
                chain_open &= ~done
                rollouts = torch.cat([rollouts, new_roll], dim=1)
            leaf = rollouts.clamp_min(0).long()
            open_roll = (rollouts >= 0) & ~tree.terminal[ar[:, None], leaf]
            open_roll &= tree.depth[ar[:, None], leaf] < T
            if bool(open_roll.any()):
                exp = ctx.expand(tree, torch.where(open_roll, rollouts, -1), 1, sampling, score=False)
                rollouts = torch.where(open_roll, exp.children[..., 0], rollouts)
            if not bool(chain_open.any()) and not bool(open_roll.any()):
                break
        records = []
        for b, ex in enumerate(examples):
            # The solution is the path root -> last chain node; a rollout labels the chain node
            # where its own path leaves the solution's.
            chain_b = tree.path_to_root(b, int(chain[b]))[::-1][1:]
            on_chain = set(chain_b)
            texts = [ctx.text(tree, b, n) for n in chain_b]
            steps = _steps(texts, ctx.step.delimiter)
            chain_ok = bool(grade(ex, texts[-1]))
            hits = {n: [chain_ok] for n in chain_b}
            correct_leaves = []
            for j in range(rollouts.shape[1]):
                leaf_n = int(rollouts[b, j])
                if leaf_n < 0:
                    continue
                n = int(tree.parent[b, leaf_n])
                while n not in on_chain:
                    n = int(tree.parent[b, n])
                ok = bool(grade(ex, ctx.text(tree, b, leaf_n)))
                hits[n].append(ok)
                if ok and bool(tree.terminal[b, leaf_n]):
                    correct_leaves.append(leaf_n)
            soft = [sum(hits[n]) / len(hits[n]) for n in chain_b]
            if bool(tree.terminal[b, chain_b[-1]]):
                soft[-1] = float(chain_ok)  # the final step is labelled by its own answer
            records.append(_record(ctx, ex, steps, soft, chain_ok))
            if self.emit_rollouts:
                soft_of = dict(zip(chain_b, soft))
                found = []
                for leaf_n in correct_leaves:
                    path = tree.path_to_root(b, leaf_n)[::-1][1:]
                    found.append((_steps([ctx.text(tree, b, n) for n in path], ctx.step.delimiter),
                                  [soft_of.get(n, 1.0) for n in path]))
                records += _rollout_records(ctx, ex, found)
        ctx.policy.release(tree)
        return records

    # ------------------------------------------------------------------ separate completer
    def load_completer(self, ctx):
        """A SearchContext like ``ctx`` whose policy is the model folder ``self.completer``."""
        from dataclasses import replace
        from pathlib import Path

        from lrm_engine.models.hf_policy import HFPolicy

        if not Path(str(self.completer)).is_dir():
            from lrm_engine.errors import UserError

            raise UserError(f"annotate.completer={self.completer!r} is not a model folder; give a local "
                            "Hugging Face model directory or null (the policy completes its own solutions)")
        pol = HFPolicy.from_config(str(self.completer), step=ctx.step,
                                   max_step_tokens=int(getattr(ctx.policy, "max_step_tokens", 64)))
        return replace(ctx, policy=pol, reward=None)

    def _annotate_with_completer(self, ctx, completer, examples, grade) -> list[dict]:
        from dataclasses import replace

        from lrm_engine.core.interfaces import Problem
        from lrm_engine.models.sampling import SamplingConfig

        N, T = self.num_rollouts, ctx.max_steps
        sampling = SamplingConfig(temperature=self.temperature, seed=self.seed)
        chains = self._sample_chains(ctx, examples, sampling)  # per problem: cumulative texts
        # One completer root per (problem, proper prefix): prompt + the first i steps.
        jobs = [(k, i) for k, texts in enumerate(chains) for i in range(1, len(texts))]
        roots = [Problem(id=f"{examples[k].problem.id}@{i}", question=ctx.prompt(examples[k].problem) + chains[k][i - 1])
                 for k, i in jobs]
        cctx = replace(completer, prompt=lambda p: p.question)
        outs = self._complete(cctx, roots, [T - i for _, i in jobs], N,
                              SamplingConfig(temperature=self.temperature, seed=self.seed + 1))
        hits: dict[tuple[int, int], list] = {}
        for (k, i), comps in zip(jobs, outs):
            hits[(k, i)] = [(c, bool(grade(examples[k], chains[k][i - 1] + "".join(c)))) for c in comps]
        records = []
        for k, ex in enumerate(examples):
            texts = chains[k]
            steps = _steps(texts, ctx.step.delimiter)
            chain_ok = bool(grade(ex, texts[-1]))
            soft = [sum(ok for _, ok in hits[(k, i)]) / N for i in range(1, len(texts))] + [float(chain_ok)]
            records.append(_record(ctx, ex, steps, soft, chain_ok))
            if self.emit_rollouts:
                found = [(steps[:i] + [x.rstrip(ctx.step.delimiter) for x in c], soft[:i] + [1.0] * len(c))
                         for i in range(1, len(texts)) for c, ok in hits[(k, i)] if ok]
                records += _rollout_records(ctx, ex, found)
        return records

    @staticmethod
    def _sample_chains(ctx, examples, sampling) -> list[list[str]]:
        """One sampled solution per problem: the cumulative text after each of its steps."""
        T = ctx.max_steps
        tree = ctx.new_tree([ex.problem for ex in examples], num_actions=1, capacity=T + 2)
        B = tree.batch_size
        ar = torch.arange(B)
        node = torch.zeros(B, dtype=torch.int32)
        open_ = torch.ones(B, dtype=torch.bool)
        for _ in range(T):
            exp = ctx.expand(tree, torch.where(open_, node, -1)[:, None], 1, sampling, score=False)
            node = torch.where(open_, exp.children[:, 0, 0], node)
            open_ &= ~(tree.terminal[ar, node.long()] | (tree.depth[ar, node.long()] >= T))
            if not bool(open_.any()):
                break
        out = []
        for b in range(B):
            path = tree.path_to_root(b, int(node[b]))[::-1][1:]
            out.append([ctx.text(tree, b, n) for n in path])
        ctx.policy.release(tree)
        return out

    @staticmethod
    def _complete(cctx, roots, budgets, N, sampling) -> list[list[str]]:
        """N completions of every root (at most ``budgets[r]`` steps each): per root, per
        completion, the text of each of its steps (delimiters kept)."""
        R = len(roots)
        if R == 0:
            return []
        T = max(budgets)
        tree = cctx.new_tree(roots, num_actions=N, capacity=1 + N * (T + 1))
        ar = torch.arange(R)
        limit = torch.tensor(budgets, dtype=torch.int32)
        first = cctx.expand(tree, torch.zeros((R, 1), dtype=torch.int32), N, sampling, score=False)
        leaves = first.children[:, 0, :].clone()  # [R, N]
        for _ in range(T):
            d = tree.depth[ar[:, None], leaves.long()]
            open_ = ~tree.terminal[ar[:, None], leaves.long()] & (d < limit[:, None])
            if not bool(open_.any()):
                break
            exp = cctx.expand(tree, torch.where(open_, leaves, -1), 1, sampling, score=False)
            leaves = torch.where(open_, exp.children[..., 0], leaves)
        out = []
        for r in range(R):
            row = []
            for n in leaves[r].tolist():
                texts = [cctx.text(tree, r, x) for x in tree.path_to_root(r, int(n))[::-1][1:]]
                row.append(_steps(texts))
            out.append(row)
        cctx.policy.release(tree)
        return out

    def annotate(self, ctx, examples: Sequence[Example], grade, out: ResultsFile,
                 batch_size: int = 16, progress: bool = True, completer=None) -> list[dict]:
        """Annotate every example not yet in ``out``, appending each batch (resumable);
        ``completer``: see :meth:`annotate_batch` (default: a policy loaded from
        ``self.completer`` when that is set)."""
        if completer is None and self.completer:
            completer = self.load_completer(ctx)
        todo = [ex for ex in examples if not out.done(ex.problem.id)]
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(todo), desc="annotate mc_rollout", unit="problem", leave=False)
        for i in range(0, len(todo), batch_size):
            batch = todo[i: i + batch_size]
            out.append(self.annotate_batch(ctx, batch, grade, completer=completer))
            if bar is not None:
                bar.update(len(batch))
        if bar is not None:
            bar.close()
        return out.records()


def _steps(texts: Sequence[str], delimiter: str | None = None) -> list[str]:
    """Step texts from the cumulative texts after each step (delimiter stripped when given)."""
    out = [t[len(p):] for p, t in zip([""] + list(texts), texts)]
    return out if delimiter is None else [x.rstrip(delimiter) for x in out]


def _record(ctx, ex: Example, steps: list[str], soft: list[float], answer_correct: bool, **extra) -> dict:
    """One TRL PRM record (hard label = soft > 0, Math-Shepherd's hard estimate)."""
    return {"id": ex.problem.id, "prompt": ctx.prompt(ex.problem), "completions": steps,
            "labels": [v > 0 for v in soft], "soft_labels": soft, "answer_correct": answer_correct, **extra}


def _rollout_records(ctx, ex: Example, found) -> list[dict]:
    """The distinct correct rollouts ``found`` (``(steps, soft labels)`` pairs) as all-good
    records ``<problem id>#r<k>``."""
    seen, out = set(), []
    for steps, soft in found:
        if tuple(steps) in seen:
            continue
        seen.add(tuple(steps))
        rec = _record(ctx, ex, steps, soft, True, source="rollout")
        rec.update(id=f"{ex.problem.id}#r{len(out)}", labels=[True] * len(steps))
        out.append(rec)
    return out
