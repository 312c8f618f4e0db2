"""Search-in-the-loop RL rollouts (``objective.rollout.search=beam|mcts|best_of_n|...`` for
``grpo`` / ``ppo``): each prompt's group is the set of finished solutions of a search guided by
the PRM, instead of ``num_generations`` plain samples.

:class:`SearchRolloutSource` follows the batch-source contract of the loop (``next_batch() ->
(batch, prompt indices)``, ``state_dict`` / ``load_state_dict``). Each call:

1. takes the next ``prompts_per_batch`` problems (seeded, resumable
   :class:`~lrm_engine.train.data.DataOrder`, as :class:`~lrm_engine.train.rl.GroupRolloutSource`);
2. runs the search on them, batched, through a :class:`~lrm_engine.core.engine.SearchContext`
   whose policy is the policy being trained (the engine's ``tree`` policy over it, or ``hf``
   for architectures the tree policy does not run) and whose reward model is the PRM
   (``search_prm``); the search is built **by name from the registry**
   (``get_registry("search").create(search, **search_args)``) — the engine never imports a
   search plugin — so any registered search, a third-party one included, can produce rollouts;
3. forms the group of problem i from the search result's finished candidates
   (``SearchResult.candidates``, in the search's order; every candidate is one row, duplicates
   included: a search that keeps the same solution twice weights it twice); a problem with no
   finished candidate contributes its chosen (possibly unfinished) solution as a single row, so
   every group has at least one row (its advantage is 0 under GRPO: one member, std 0);
4. rewards every row as plain rollouts are rewarded: ``task.grade(example, text)`` (1 / 0), plus
   ``reward_fn`` (the RL run's optional PRM reward, ``objective.prm``) when given.

Rows are ``prompt tokens + the solution text re-encoded + EOS`` (the tokens the search's policy
sampled, when the tokenizer round-trips its text, as the built-in character and BPE tokenizers
do for the arith tasks). The batch is the rollout layout of :mod:`lrm_engine.objectives.grpo`
(contiguous groups, ``group_offsets``; groups may differ in size), plus ``accuracy`` and ``log``
(``group_size``: mean rows per problem; ``search_tokens_per_solution``: the policy's
``tokens_computed`` for the batch / rows).

Search rollouts are not samples of the current policy (the PRM selects them), so the
policy-gradient is off-policy by the search's selection; that is the method (e.g. ReST-style and
TreeRL-style search-in-the-loop RL), and the clip / KL terms of the objectives apply as usual.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

from .data import DataOrder, pad_rows, take_examples, verifier_rewards


def build_search(name: str, args: Mapping[str, Any] | None = None):
    """A search algorithm by registry name (an unknown name lists the registered ones)."""
    from ..plugin_manager import get_registry

    return get_registry("search").create(str(name), **dict(args or {}))


def build_search_prm(path: str | None, device: str = "cpu"):
    """The PRM guiding the search: a ``prm_token`` reward model from the registry (``path``:
    a folder, ``"default"``: the embedded default PRM; None: no reward model)."""
    if path is None:
        return None
    from ..default_models import resolve_model_path
    from ..plugin_manager import get_registry

    p = resolve_model_path(None if path == "default" else path, "prm", "objective.rollout.search_prm")
    return get_registry("reward").create("prm_token", path=str(p), device=device)


class SearchRolloutSource:
    """Groups of searched solutions with verifier rewards (see the module docstring)."""

    def __init__(self, model, tokenizer, task, *, search, search_args: Mapping[str, Any] | None = None,
                 reward_model=None, split: str = "train", num_prompts: int | None = None,
                 prompts_per_batch: int = 8, max_steps: int = 10, max_step_tokens: int = 24,
                 temperature: float = 1.0, seed: int = 0, shuffle: bool = True, reward_fn=None,
                 kv_budget_mb: float = 512.0):
        if prompts_per_batch <= 0 or max_steps <= 0:
            raise ValueError("prompts_per_batch and max_steps must be positive")
        self.model, self.tokenizer, self.task = model, tokenizer, task
        self.examples = exs = take_examples(task, split, num_prompts)
        # The search: a registry name (built here, once) or an already built search object.
        self.search_name = search if isinstance(search, str) else getattr(search, "name", type(search).__name__)
        self.search = build_search(search, search_args) if isinstance(search, str) else search
        self.reward_model = reward_model
        self.prompts_per_batch, self.max_steps, self.max_step_tokens = prompts_per_batch, max_steps, max_step_tokens
        self.temperature, self.seed, self.reward_fn = float(temperature), seed, reward_fn
        self.kv_budget_mb = kv_budget_mb
        self.order = DataOrder(len(exs), seed, shuffle)
        self.position = 0
        # The L of dr_grpo's normaliser: the longest solution the search can produce.
        self.max_new_tokens = max_steps * max_step_tokens

    def _ctx(self, gen_seed: int):
        from ..core.engine import SearchContext
        from ..models.hf_policy import HFPolicy, PolicyError
        from ..models.sampling import SamplingConfig

        kw = dict(step=self.task.step, max_step_tokens=self.max_step_tokens, kv_budget_mb=self.kv_budget_mb)
        try:
            from ..models.tree_policy import TreePolicy

            policy = TreePolicy(self.model, self.tokenizer, **kw)
        except PolicyError:  # an architecture the tree policy does not run
            policy = HFPolicy(self.model, self.tokenizer, **kw)
        return SearchContext(policy=policy, step=self.task.step, prompt=self.task.prompt,
                             reward=self.reward_model,
                             sampling=SamplingConfig(temperature=self.temperature, seed=gen_seed),
                             max_steps=self.max_steps, seed=self.seed)

    def solutions(self, examples) -> tuple[list[list[str]], int]:
        """Per example, the texts of its group (module docstring, 3.), and the policy tokens the
        search computed."""
        gen_seed = self.seed * 1_000_003 + self.position
        was = self.model.training
        ctx = self._ctx(gen_seed)
        try:
            before = ctx.policy.counters.tokens_computed
            results = self.search.run(ctx, [ex.problem for ex in examples])
            computed = ctx.policy.counters.tokens_computed - before
        finally:
            self.model.train(was)
        groups = []
        for r in results:
            texts = [c["text"] for c in (r.candidates or []) if c.get("text") is not None]
            groups.append(texts or [r.solution])
        return groups, computed

    def next_batch(self):
        tok = self.tokenizer
        idx = self.order.take(self.position, self.prompts_per_batch)
        exs = [self.examples[i] for i in idx]
        groups, computed = self.solutions(exs)
        self.position += self.prompts_per_batch
        rows, masks, verified, r_exs, texts, offsets = [], [], [], [], [], [0]
        eos = [tok.eos_token_id] if tok.eos_token_id is not None else []
        for ex, group in zip(exs, groups):
            p = tok.encode(self.task.prompt(ex.problem), add_special_tokens=True)
            for text in group:
                c = tok.encode(text, add_special_tokens=False) + eos
                r_exs.append(ex)
                texts.append(text)
                rows.append(p + c)
                masks.append([0] * len(p) + [1] * len(c))
            offsets.append(len(rows))
        verified, rewards = verifier_rewards(self.task, self.reward_fn, r_exs, texts)
        N = len(rows)
        ids, am, cm = pad_rows(rows, masks, tok.pad_token_id if tok.pad_token_id is not None else 0)
        batch: dict[str, Any] = {"input_ids": ids, "attention_mask": am, "completion_mask": cm,
                                 "rewards": torch.tensor(rewards), "group_offsets": torch.tensor(offsets),
                                 "max_completion_length": self.max_new_tokens,
                                 "accuracy": sum(verified) / max(N, 1),
                                 "log": {"group_size": N / max(len(idx), 1),
                                         "search_tokens_per_solution": computed / max(N, 1)}}
        return batch, list(idx)

    @property
    def epoch(self) -> float:
        return self.position / len(self.examples)

    def state_dict(self) -> dict:
        return {"position": self.position, "num_prompts": len(self.examples), "seed": self.seed,
                "prompts_per_batch": self.prompts_per_batch, "search": self.search_name}

    def load_state_dict(self, state: Mapping) -> None:
        mine = self.state_dict()
        for k in ("num_prompts", "seed", "prompts_per_batch", "search"):
            if k in state and state[k] != mine[k]:
                raise ValueError(f"cannot resume: rollout settings changed ({k}: checkpoint "
                                 f"{state[k]!r}, now {mine[k]!r})")
        self.position = int(state["position"])
