"""VinePPO rollouts: trajectories and Monte-Carlo state values drawn through the tree engine.

:class:`VineRolloutSource` follows the batch-source contract of the loop (``next_batch() ->
(batch, prompt indices)``, ``state_dict`` / ``load_state_dict``). Each batch:

1. Trajectories. The next ``prompts_per_batch`` problems (seeded, resumable order) become the
   roots of one :class:`~lrm_engine.core.tree.BatchedTree`; each root is expanded with
   ``num_generations`` children by :class:`~lrm_engine.models.hf_policy.HFPolicy` (the policy
   being trained, through :meth:`SearchContext.expand`), and every child is grown step by step
   (one batched policy call per step for all trajectories) until it ends (answer line / EOS) or
   reaches ``max_steps``. Each trajectory is rewarded by the verifier (``task.grade``; plus
   ``reward_fn``, e.g. the PRM, when given).
2. Values. The states ``s_0 .. s_{n-1}`` of every trajectory (prompt + the first t steps) are
   deduplicated by their token sequence (trajectories that share a prefix share its states:
   the group's common ``s_0`` always, identical first steps often). The unique states are the
   roots of a second tree; each is expanded with ``mc_rollouts`` = K children and every child is
   grown to the end (again one policy call per step for all of them; the K completions of a
   state share its prefix's KV segments, built once). ``V(s)`` = mean reward of its K
   completions.
3. Batch. Rows ``prompt + steps`` with ``completion_mask``, token ``advantages``
   (:func:`lrm_engine.objectives.vineppo.step_advantages`: A_t = V(s_{t+1}) - V(s_t), V(s_n) =
   the trajectory's reward), ``rewards``, ``group_offsets``, ``accuracy`` and ``log``
   (``mc_states``: unique states valued, ``mc_dedup``: share of states saved by deduplication,
   ``value``: mean V).

Sampling is seeded by the batch's position (a resumed run redraws the same samples from the
same weights). The policy's KV store lives for one batch only (the weights change every step).
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

from .data import DataOrder, pad_rows, take_examples, verifier_rewards


class VineRolloutSource:
    """Trajectories with Monte-Carlo step values (see the module docstring)."""

    def __init__(self, model, tokenizer, task, *, split: str = "train", num_prompts: int | None = None,
                 prompts_per_batch: int = 4, num_generations: int = 4, mc_rollouts: int = 4,
                 max_steps: int = 10, max_step_tokens: int = 24, temperature: float = 1.0,
                 seed: int = 0, shuffle: bool = True, reward_fn=None):
        if min(prompts_per_batch, num_generations, mc_rollouts, max_steps) <= 0:
            raise ValueError("prompts_per_batch, num_generations, mc_rollouts and max_steps must be positive")
        self.model, self.tokenizer, self.task = model, tokenizer, task
        self.examples = exs = take_examples(task, split, num_prompts)
        self.prompts_per_batch, self.num_generations = prompts_per_batch, num_generations
        self.mc_rollouts, self.max_steps, self.max_step_tokens = mc_rollouts, max_steps, max_step_tokens
        self.temperature, self.seed = float(temperature), seed
        self.reward_fn = reward_fn
        self.order = DataOrder(len(exs), seed, shuffle)
        self.position = 0

    # ------------------------------------------------------------------ pieces
    def _ctx(self, gen_seed: int):
        from ..core.engine import SearchContext
        from ..models.hf_policy import HFPolicy
        from ..models.sampling import SamplingConfig

        policy = HFPolicy(self.model, self.tokenizer, step=self.task.step,
                          max_step_tokens=self.max_step_tokens, kv_budget_mb=512)
        return SearchContext(policy=policy, step=self.task.step, prompt=lambda p: p,
                             sampling=SamplingConfig(temperature=self.temperature, seed=gen_seed),
                             max_steps=self.max_steps)

    def _grow(self, ctx, tree, roots_k: int, budget: list[int]) -> torch.Tensor:
        """Expand every root with ``roots_k`` children, grow each to the end; [B, roots_k] leaves.
        ``budget[b]``: most steps after root b."""
        B = tree.batch_size
        ar = torch.arange(B)[:, None]
        roots = torch.zeros((B, 1), dtype=torch.int32)
        exp = ctx.expand(tree, roots, roots_k, score=False)
        front = exp.children[:, 0, :].clone()
        bud = torch.tensor(budget)[:, None]
        for _ in range(max(budget) - 1):
            ok = front >= 0
            f = front.clamp_min(0).long()
            active = ok & ~tree.terminal[ar, f] & (tree.depth[ar, f].cpu() < bud)
            if not bool(active.any()):
                break
            e = ctx.expand(tree, torch.where(active, front, -1), 1, score=False)
            front = torch.where(active, e.children[..., 0], front)
        return front

    def _rewards(self, exs, texts) -> tuple[list[float], list[float]]:
        return verifier_rewards(self.task, self.reward_fn, exs, texts)

    # ------------------------------------------------------------------ batches
    def next_batch(self):
        from ..objectives.vineppo import step_advantages, token_advantages

        tok = self.tokenizer
        idx = self.order.take(self.position, self.prompts_per_batch)
        gen_seed = self.seed * 1_000_003 + self.position
        self.position += self.prompts_per_batch
        was = self.model.training
        prompts = [tok.encode(self.task.prompt(self.examples[i].problem), add_special_tokens=True)
                   for i in idx]
        G, K = self.num_generations, self.mc_rollouts
        ctx = self._ctx(gen_seed)
        pol = ctx.policy
        try:
            # 1. trajectories
            t1 = ctx.new_tree(prompts, num_actions=G, capacity=1 + G * self.max_steps)
            leaves = self._grow(ctx, t1, G, [self.max_steps] * len(idx))
            ar1 = pol.arena(t1)
            trajs = []  # (prompt slot k, [step token lists], text)
            for k in range(len(idx)):
                for g in range(G):
                    leaf = int(leaves[k, g])
                    path = t1.path_to_root(k, leaf)[::-1]
                    steps = [ar1.node_tokens(t1, k, m).tolist() for m in path[1:]]
                    text = tok.decode([t for s in steps for t in s if t != tok.eos_token_id],
                                      skip_special_tokens=True)
                    trajs.append((k, steps, text))
            pol.release(t1)
            ver, rew = self._rewards([self.examples[idx[k]] for k, _, _ in trajs], [t for _, _, t in trajs])
            # 2. unique states and their MC values
            keys: dict[tuple, int] = {}
            state_ids: list[list[int]] = []
            n_states = 0
            for k, steps, _ in trajs:
                ids, pre = [], list(prompts[k])
                for t in range(len(steps)):  # s_0 .. s_{n-1}
                    key = (k, tuple(pre))
                    if key not in keys:
                        keys[key] = len(keys)
                    ids.append(keys[key])
                    pre = pre + steps[t]
                    n_states += 1
                state_ids.append(ids)
            uniq = sorted(keys, key=keys.get)
            values = [0.0] * len(uniq)
            if uniq:
                roots = [list(p) for _, p in uniq]
                # steps left after a state: max_steps minus the steps already in its prefix
                budget = [self.max_steps] * len(uniq)
                for ti in range(len(trajs)):
                    for t, sid in enumerate(state_ids[ti]):
                        budget[sid] = max(1, self.max_steps - t)
                t2 = ctx.new_tree(roots, num_actions=K, capacity=1 + K * self.max_steps)
                ends = self._grow(ctx, t2, K, budget)
                ar2 = pol.arena(t2)
                r_exs, r_texts = [], []
                for j, (k, p) in enumerate(uniq):
                    cut = len(prompts[k])
                    for a in range(K):
                        full = ar2.path_tokens(t2, j, int(ends[j, a])).tolist()[cut:]
                        r_exs.append(self.examples[idx[k]])
                        r_texts.append(tok.decode([t for t in full if t != tok.eos_token_id],
                                                  skip_special_tokens=True))
                pol.release(t2)
                _, r_rew = self._rewards(r_exs, r_texts)
                values = [sum(r_rew[j * K:(j + 1) * K]) / K for j in range(len(uniq))]
        finally:
            self.model.train(was)
        # 3. the batch
        rows, masks, starts, lens, advs, offsets = [], [], [], [], [], [0]
        for ti, (k, steps, _) in enumerate(trajs):
            p = prompts[k]
            comp = [t for s in steps for t in s]
            rows.append(p + comp)
            masks.append([0] * len(p) + [1] * len(comp))
            starts.append(len(p))
            lens.append([len(s) for s in steps])
            advs.append(step_advantages([values[s] for s in state_ids[ti]], rew[ti]))
            if ti % G == G - 1:
                offsets.append(len(rows))
        T = max(len(r) for r in rows)
        N = len(rows)
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        ids, am, cm = pad_rows(rows, masks, pad)
        batch: dict[str, Any] = {
            "input_ids": ids, "attention_mask": am, "completion_mask": cm,
            "advantages": token_advantages(lens, advs, starts, T), "rewards": torch.tensor(rew),
            "group_offsets": torch.tensor(offsets), "accuracy": sum(ver) / max(len(ver), 1),
            "log": {"mc_states": float(len(uniq)),
                    "mc_dedup": 1.0 - len(uniq) / max(n_states, 1),
                    "value": sum(values) / max(len(values), 1)},
        }
        return batch, list(idx)

    @property
    def epoch(self) -> float:
        return self.position / len(self.examples)

    def state_dict(self) -> dict:
        return {"position": self.position, "num_prompts": len(self.examples), "seed": self.seed,
                "prompts_per_batch": self.prompts_per_batch, "num_generations": self.num_generations,
                "mc_rollouts": self.mc_rollouts}

    def load_state_dict(self, state: Mapping) -> None:
        mine = self.state_dict()
        for k in ("num_prompts", "seed", "prompts_per_batch", "num_generations", "mc_rollouts"):
            if k in state and state[k] != mine[k]:
                raise ValueError(f"cannot resume: rollout settings changed ({k}: checkpoint "
                                 f"{state[k]!r}, now {mine[k]!r})")
        self.position = int(state["position"])
