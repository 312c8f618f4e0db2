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
    name: str = "mc_rollout"

    def __post_init__(self) -> None:
        if self.num_rollouts < 1:
            raise ValueError("annotate.num_rollouts must be >= 1")

    def annotate_batch(self, ctx, examples: Sequence[Example], grade: Callable[[Example, str], bool]) -> list[dict]:
        """Label one batch of examples; returns one PRM record per example."""
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
            steps = [t[len(p):].rstrip(ctx.step.delimiter) for p, t in zip([""] + texts, texts)]
            final_text = texts[-1]
            chain_ok = bool(grade(ex, final_text))
            hits = {n: [chain_ok] for n in chain_b}
            for j in range(rollouts.shape[1]):
                leaf_n = int(rollouts[b, j])
                if leaf_n < 0:
                    continue
                n = int(tree.parent[b, leaf_n])
                while n not in on_chain:
                    n = int(tree.parent[b, n])
                hits[n].append(bool(grade(ex, ctx.text(tree, b, leaf_n))))
            soft = [sum(hits[n]) / len(hits[n]) for n in chain_b]
            if bool(tree.terminal[b, chain_b[-1]]):
                soft[-1] = float(chain_ok)  # the final step is labelled by its own answer
            records.append({
                "id": ex.problem.id,
                "prompt": ctx.prompt(ex.problem),
                "completions": steps,
                "labels": [s > 0 for s in soft],
                "soft_labels": soft,
                "answer_correct": chain_ok,
            })
        ctx.policy.release(tree)
        return records

    def annotate(self, ctx, examples: Sequence[Example], grade, out: ResultsFile,
                 batch_size: int = 16, progress: bool = True) -> list[dict]:
        """Annotate every example not yet in ``out``, appending each batch (resumable)."""
        todo = [ex for ex in examples if not out.done(ex.problem.id)]
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(todo), desc="annotate mc_rollout", unit="problem", leave=False)
        for i in range(0, len(todo), batch_size):
            batch = todo[i: i + batch_size]
            out.append(self.annotate_batch(ctx, batch, grade))
            if bar is not None:
                bar.update(len(batch))
        if bar is not None:
            bar.close()
        return out.records()
