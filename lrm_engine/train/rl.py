"""On-policy rollouts for ``grpo`` / ``ppo``: a batch source that samples groups of completions
with the policy being trained and scores them with the task's verifier (SKELETON).

:class:`GroupRolloutSource` follows the batch-source contract of the loop
(:mod:`lrm_engine.train.data`): ``next_batch() -> (batch, prompt indices)``, ``state_dict`` /
``load_state_dict``. Each call takes the next ``prompts_per_batch`` problems of the split (in a
seeded, resumable :class:`~lrm_engine.train.data.DataOrder`), samples ``num_generations``
completions per prompt with the *current* policy (``model.generate``, temperature sampling,
seeded per batch position so a resumed run redraws the same samples from the same weights), and
rewards each with ``task.grade(example, completion)`` (1.0 / 0.0: the arith verifier for the
``arith`` task). The batch is the rollout layout of :mod:`lrm_engine.objectives.grpo` (one
group per prompt, contiguous rows, ``group_offsets``), plus ``accuracy``.

Status: a skeleton for issue 7 §4 — sampling goes through Hugging Face ``generate`` (not yet the
tree engine's SearchContext/HFPolicy), a single optimisation per rollout (no ``old_logps``), no
PRM reward, no evaluation loop; the train verb has no ``rollout`` recipe yet.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

from .data import DataOrder


class GroupRolloutSource:
    """Groups of sampled completions with verifier rewards (see the module docstring)."""

    def __init__(self, model, tokenizer, task, *, split: str = "train", num_prompts: int | None = None,
                 prompts_per_batch: int = 8, num_generations: int = 8, max_new_tokens: int = 128,
                 temperature: float = 1.0, seed: int = 0, shuffle: bool = True):
        if prompts_per_batch <= 0 or num_generations <= 0:
            raise ValueError("prompts_per_batch and num_generations must be positive")
        self.model, self.tokenizer, self.task = model, tokenizer, task
        exs = []
        for i, ex in enumerate(task.examples(split)):
            if num_prompts is not None and i >= num_prompts:
                break
            exs.append(ex)
        if not exs:
            raise ValueError(f"no problems in split {split!r}")
        self.examples = exs
        self.prompts_per_batch, self.num_generations = prompts_per_batch, num_generations
        self.max_new_tokens, self.temperature, self.seed = max_new_tokens, float(temperature), seed
        self.order = DataOrder(len(exs), seed, shuffle)
        self.position = 0

    @torch.no_grad()
    def _sample(self, prompt_ids: list[int], gen_seed: int) -> list[list[int]]:
        model, tok = self.model, self.tokenizer
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        torch.manual_seed(gen_seed)
        ids = torch.tensor([prompt_ids], device=device)
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True,
                             temperature=self.temperature, top_k=0, top_p=1.0,
                             max_new_tokens=self.max_new_tokens,
                             num_return_sequences=self.num_generations,
                             eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        if was_training:
            model.train()
        comps = []
        for row in out[:, len(prompt_ids):].tolist():
            if tok.eos_token_id in row:
                row = row[: row.index(tok.eos_token_id) + 1]
            else:
                row = [t for t in row if t != tok.pad_token_id]
            comps.append(row)
        return comps

    def next_batch(self):
        tok = self.tokenizer
        idx = self.order.take(self.position, self.prompts_per_batch)
        gen_seed = self.seed * 1_000_003 + self.position
        self.position += self.prompts_per_batch
        rows, masks, rewards, offsets = [], [], [], [0]
        for k, i in enumerate(idx):
            ex = self.examples[i]
            p = tok.encode(self.task.prompt(ex.problem), add_special_tokens=True)
            for c in self._sample(p, gen_seed + k):
                text = tok.decode([t for t in c if t != tok.eos_token_id], skip_special_tokens=True)
                rewards.append(1.0 if self.task.grade(ex, text) else 0.0)
                rows.append(p + c)
                masks.append([0] * len(p) + [1] * len(c))
            offsets.append(len(rows))
        T = max(len(r) for r in rows)
        N = len(rows)
        ids = torch.full((N, T), tok.pad_token_id, dtype=torch.long)
        am = torch.zeros((N, T), dtype=torch.long)
        cm = torch.zeros((N, T), dtype=torch.long)
        for n, (r, m) in enumerate(zip(rows, masks)):
            ids[n, :len(r)] = torch.tensor(r)
            am[n, :len(r)] = 1
            cm[n, :len(m)] = torch.tensor(m)
        r = torch.tensor(rewards)
        batch: dict[str, Any] = {"input_ids": ids, "attention_mask": am, "completion_mask": cm,
                                 "rewards": r, "group_offsets": torch.tensor(offsets),
                                 "max_completion_length": self.max_new_tokens,
                                 "accuracy": float(r.mean())}
        return batch, list(idx)

    @property
    def epoch(self) -> float:
        return self.position / len(self.examples)

    def state_dict(self) -> dict:
        return {"position": self.position, "num_prompts": len(self.examples), "seed": self.seed,
                "prompts_per_batch": self.prompts_per_batch, "num_generations": self.num_generations}

    def load_state_dict(self, state: Mapping) -> None:
        mine = self.state_dict()
        for k in ("num_prompts", "seed", "prompts_per_batch", "num_generations"):
            if k in state and state[k] != mine[k]:
                raise ValueError(f"cannot resume: rollout settings changed ({k}: checkpoint "
                                 f"{state[k]!r}, now {mine[k]!r})")
        self.position = int(state["position"])
