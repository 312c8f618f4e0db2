"""On-policy rollouts for ``grpo`` / ``ppo``: a batch source that samples groups of completions
with the policy being trained and scores them with the task's verifier.

:class:`GroupRolloutSource` follows the batch-source contract of the loop
(:mod:`lrm_engine.train.data`): ``next_batch() -> (batch, prompt indices)``, ``state_dict`` /
``load_state_dict``. Each call takes the next ``prompts_per_batch`` problems of the split (in a
seeded, resumable :class:`~lrm_engine.train.data.DataOrder`), samples ``num_generations``
completions per prompt with the *current* policy (``model.generate``, temperature sampling,
seeded per batch position so a resumed run redraws the same samples from the same weights), and
rewards each with ``task.grade(example, completion)`` (1.0 / 0.0: the arith verifier for the
``arith`` task). The batch is the rollout layout of :mod:`lrm_engine.objectives.grpo` (one
group per prompt, contiguous rows, ``group_offsets``), plus ``accuracy``.

Sampling goes through Hugging Face ``generate`` (one left-padded call per batch,
``batch_generate``). The batch carries no ``old_logps``: with one optimisation pass per rollout
the objectives take the current log-probs, detached; several passes (``num_iterations``)
wrap this source in :class:`~lrm_engine.train.rl_replay.ReplaySource`, which adds them. ``reward_fn`` adds an
extra reward (the PRM's score, :mod:`lrm_engine.train.rl_run`) to the verifier's; ``accuracy``
is always the verifier's share. The ``lrm train`` recipe is :mod:`lrm_engine.train.rl_run`.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

from .data import DataOrder, pad_rows, take_examples, verifier_rewards


class GroupRolloutSource:
    """Groups of sampled completions with verifier rewards (see the module docstring)."""

    def __init__(self, model, tokenizer, task, *, split: str = "train", num_prompts: int | None = None,
                 prompts_per_batch: int = 8, num_generations: int = 8, max_new_tokens: int = 128,
                 temperature: float = 1.0, seed: int = 0, shuffle: bool = True,
                 reward_fn=None, batch_generate: bool = True):
        if prompts_per_batch <= 0 or num_generations <= 0:
            raise ValueError("prompts_per_batch and num_generations must be positive")
        self.model, self.tokenizer, self.task = model, tokenizer, task
        self.examples = exs = take_examples(task, split, num_prompts)
        self.prompts_per_batch, self.num_generations = prompts_per_batch, num_generations
        self.max_new_tokens, self.temperature, self.seed = max_new_tokens, float(temperature), seed
        self.order = DataOrder(len(exs), seed, shuffle)
        self.position = 0
        # Data parallel (shard): this rank's slice of each global batch of prompts.
        self.rank, self.world = 0, 1
        # Optional extra reward: reward_fn(examples, completion_texts) -> list of floats added to
        # the verifier's 1/0 (e.g. the PRM's score of the solution, see lrm_engine.train.rl_run).
        self.reward_fn = reward_fn
        # One generate call for all prompts of a batch (left-padded), instead of one per prompt.
        self.batch_generate = bool(batch_generate)

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

    @torch.no_grad()
    def _sample_many(self, prompts: list[list[int]], gen_seed: int) -> list[list[list[int]]]:
        """``num_generations`` completions of every prompt, one left-padded generate call."""
        model, tok = self.model, self.tokenizer
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        torch.manual_seed(gen_seed)
        L = max(len(p) for p in prompts)
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        ids = torch.full((len(prompts), L), pad, dtype=torch.long)
        am = torch.zeros((len(prompts), L), dtype=torch.long)
        for r, p in enumerate(prompts):
            ids[r, L - len(p):] = torch.tensor(p)
            am[r, L - len(p):] = 1
        out = model.generate(input_ids=ids.to(device), attention_mask=am.to(device), do_sample=True,
                             temperature=self.temperature, top_k=0, top_p=1.0,
                             max_new_tokens=self.max_new_tokens,
                             num_return_sequences=self.num_generations,
                             eos_token_id=tok.eos_token_id, pad_token_id=pad)
        if was_training:
            model.train()
        groups: list[list[list[int]]] = [[] for _ in prompts]
        for n, row in enumerate(out[:, L:].tolist()):
            if tok.eos_token_id in row:
                row = row[: row.index(tok.eos_token_id) + 1]
            else:
                row = [t for t in row if t != pad]
            groups[n // self.num_generations].append(row)
        return groups

    def shard(self, rank: int, world: int) -> None:
        """Data parallel: a global batch is ``prompts_per_batch * world`` prompts; this rank
        generates for (only) its ``rank``-th slice of ``prompts_per_batch`` of them, seeded by
        its slice's stream position; ``position`` stays global."""
        self.rank, self.world = rank, world

    def next_batch(self):
        tok = self.tokenizer
        first = self.position + self.rank * self.prompts_per_batch
        idx = self.order.take(first, self.prompts_per_batch)
        gen_seed = self.seed * 1_000_003 + first
        self.position += self.prompts_per_batch * self.world
        rows, masks, rewards, offsets = [], [], [], [0]
        prompts = [tok.encode(self.task.prompt(self.examples[i].problem), add_special_tokens=True)
                   for i in idx]
        if self.batch_generate:
            comps = self._sample_many(prompts, gen_seed)
        else:
            comps = [self._sample(p, gen_seed + k) for k, p in enumerate(prompts)]
        verified, exs, texts = [], [], []
        for k, i in enumerate(idx):
            ex, p = self.examples[i], prompts[k]
            for c in comps[k]:
                text = tok.decode([t for t in c if t != tok.eos_token_id], skip_special_tokens=True)
                exs.append(ex)
                texts.append(text)
                rows.append(p + c)
                masks.append([0] * len(p) + [1] * len(c))
            offsets.append(len(rows))
        verified, rewards = verifier_rewards(self.task, self.reward_fn, exs, texts)
        ids, am, cm = pad_rows(rows, masks, tok.pad_token_id)
        r = torch.tensor(rewards)
        batch: dict[str, Any] = {"input_ids": ids, "attention_mask": am, "completion_mask": cm,
                                 "rewards": r, "group_offsets": torch.tensor(offsets),
                                 "max_completion_length": self.max_new_tokens,
                                 "accuracy": float(torch.tensor(verified).mean())}
        self._count(batch)
        return batch, list(idx)

    # ------------------------------------------------------------ counters (bench/rl.py)
    def _count(self, batch) -> None:
        """Add a batch's rows and tokens (prompt + completion per row: what i.i.d. sampling
        computes at least; generate's padding is not counted) to the run totals."""
        t = self.__dict__.setdefault("_totals", {"iid_tokens": 0, "leaves": 0})
        t["iid_tokens"] += int(batch["attention_mask"].sum())
        t["leaves"] += int(batch["attention_mask"].shape[0])

    def totals(self) -> dict[str, float]:
        """Run totals: completions (leaves) and their tokens, and tokens per completion."""
        t = dict(self.__dict__.get("_totals") or {"iid_tokens": 0, "leaves": 0})
        return t | {"iid_tokens_per_leaf": t["iid_tokens"] / max(t["leaves"], 1)}

    @property
    def epoch(self) -> float:
        return self.position / len(self.examples)

    def state_dict(self) -> dict:
        return {"position": self.position, "num_prompts": len(self.examples), "seed": self.seed,
                "prompts_per_batch": self.prompts_per_batch * self.world,
                "num_generations": self.num_generations,
                "totals": dict(self.__dict__.get("_totals") or {})}

    def load_state_dict(self, state: Mapping) -> None:
        mine = self.state_dict()
        for k in ("num_prompts", "seed", "prompts_per_batch", "num_generations"):
            if k in state and state[k] != mine[k]:
                raise ValueError(f"cannot resume: rollout settings changed ({k}: checkpoint "
                                 f"{state[k]!r}, now {mine[k]!r})")
        self.position = int(state["position"])
        if state.get("totals"):
            self._totals = {k: int(v) for k, v in state["totals"].items()}
