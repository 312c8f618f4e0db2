"""The Objective contract: what the one training loop (:mod:`lrm_engine.train.trainer`) calls.

The loop knows no objective by name. An objective is any object with

    loss(model, batch) -> (loss: scalar tensor, metrics: dict[str, float])

``batch`` is whatever the run's batch source yields (for SFT a dict of tensors; for RL a
rollout batch the objective itself produced). ``loss`` must be differentiable with respect to
the parameters being trained; ``metrics`` are plain floats (logged to TensorBoard under
``objective/<key>`` and shown on the progress bar). That is the whole required surface.

Optional hooks (the loop calls them when present; :class:`ObjectiveBase` gives no-op defaults so
an objective overrides only what it needs). They exist for the objectives that come next —
PRM/ORM (extra head), DPO family (frozen reference model), PPO/GRPO/VinePPO (rollouts, value
head, KL to a reference), ReST-MCTS* (outer iterations):

- ``setup(model, device)``: called once before the first step (and again after a resume,
  before the checkpoint's state is loaded): build a frozen reference copy, a value head, ...
- ``trainable_modules() -> dict[str, nn.Module]``: extra modules the optimizer trains next to
  the model (a value head); saved in every checkpoint as ``<name>.safetensors`` and restored on
  resume.
- ``loss_weight(batch) -> float``: the weight of a micro-batch within an accumulated step. The
  step's loss is ``sum_i w_i * loss_i / sum_i w_i``; the default weight 1 averages micro-batch
  losses; SFT uses the number of completion tokens so that gradient accumulation gives exactly
  the per-token mean over the whole step.
- ``num_tokens(batch) -> int``: tokens processed, for the tokens/s figure (default:
  ``batch["num_tokens"]``, else the sum of ``batch["attention_mask"]``, else the numel of
  ``batch["input_ids"]``).
- ``state_dict() / load_state_dict(d)``: small JSON-serialisable objective state (an adaptive KL
  coefficient, an iteration counter), saved in every checkpoint's sidecar.
- ``on_step_end(step, model, metrics)``: after each optimizer step (coarse: once per step, not per
  micro-batch): refresh a reference model, adapt a coefficient, ...
"""

from __future__ import annotations

from typing import Any, Mapping, Protocol, runtime_checkable


@runtime_checkable
class Objective(Protocol):
    """The required surface of a training objective."""

    # Registry name ("sft", "prm", "dpo", ...); used only for logging and checkpoint metadata.
    name: str

    def loss(self, model: Any, batch: Any) -> tuple[Any, dict[str, float]]:
        """``(differentiable scalar loss, metrics as floats)`` for one micro-batch."""
        ...


class ObjectiveBase:
    """Convenience base: no-op defaults for every optional hook of the loop. A per-batch
    objective adds ``loss`` (the :class:`Objective` protocol); a recipe objective whose run is
    its own outer loop (``rest_mcts``) has none."""

    name: str = "objective"

    def setup(self, model, device) -> None:
        return None

    def trainable_modules(self) -> dict:
        return {}

    def loss_weight(self, batch) -> float:
        return 1.0

    def num_tokens(self, batch) -> int:
        return default_num_tokens(batch)

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: Mapping) -> None:
        return None

    def on_step_end(self, step: int, model, metrics: Mapping[str, float]) -> None:
        return None


def default_num_tokens(batch) -> int:
    """Non-padding tokens of a dict batch: its ``num_tokens`` entry, else the ``attention_mask``
    sum, else the ``input_ids`` numel; 0 for other batch types."""
    if isinstance(batch, Mapping):
        if batch.get("num_tokens") is not None:
            return int(batch["num_tokens"])
        am = batch.get("attention_mask")
        if am is not None:
            return int(am.sum())
        ids = batch.get("input_ids")
        if ids is not None:
            return int(ids.numel())
    return 0
