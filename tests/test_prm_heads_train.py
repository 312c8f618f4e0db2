"""objective=prm with head=prm_head / value_head: golden losses, and the trained folder loads as
the reward of the same name (scores equal to the training read-out)."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch

from lrm_engine.objectives.prm import PRMObjective, head_logits


class FixedHidden(torch.nn.Module):
    """A "token classifier" whose decoder returns fixed hidden states and whose ``score`` head is
    a Linear with hand-set weights: the head's logits at each tag are known exactly."""

    def __init__(self, hidden: torch.Tensor, weight, bias=None):
        super().__init__()
        self.hidden = hidden
        w = torch.tensor(weight, dtype=torch.float32)
        self.score = torch.nn.Linear(w.shape[1], w.shape[0], bias=bias is not None)
        with torch.no_grad():
            self.score.weight.copy_(w)
            if bias is not None:
                self.score.bias.copy_(torch.tensor(bias))
        outer = self

        class _Base(torch.nn.Module):
            def forward(self, **kw):
                return SimpleNamespace(last_hidden_state=outer.hidden)

        self.base_model = _Base()


def _batch(tags, labels, T=4):
    """One row of length T: tags at the given positions with the given labels."""
    tag = torch.zeros(1, T, dtype=torch.bool)
    lab = torch.zeros(1, T)
    for p, y in zip(tags, labels):
        tag[0, p] = True
        lab[0, p] = y
    return {"input_ids": torch.zeros(1, T, dtype=torch.long), "attention_mask": torch.ones(1, T, dtype=torch.long),
            "tag_mask": tag, "step_labels": lab}


def _hidden(rows, T=4, at=(1, 3)):
    h = torch.zeros(1, T, len(rows[0]))
    for p, r in zip(at, rows):
        h[0, p] = torch.tensor(r)
    return h


def test_prm_head_loss_is_two_class_cross_entropy():
    # Identity head: logits (z_bad, z_good) are the hidden rows. Tag 1: (0, ln 3) -> p_good 3/4,
    # label good -> -ln(3/4). Tag 3: (0, 0) -> p_good 1/2, label bad -> -ln(1/2).
    model = FixedHidden(_hidden([[0.0, math.log(3)], [0.0, 0.0]]), [[1.0, 0.0], [0.0, 1.0]], [0.0, 0.0])
    obj = PRMObjective(head="prm_head")
    loss, m = obj.loss(model, _batch([1, 3], [1.0, 0.0]))
    assert float(loss.detach()) == pytest.approx((math.log(4 / 3) + math.log(2)) / 2, rel=1e-6)
    assert m["p_good"] == pytest.approx((0.75 + 0.5) / 2)
    assert m["step_acc"] == pytest.approx(0.5)  # 3/4 >= .5 agrees with good; 1/2 >= .5 is not bad
    # what the reward reads: class 1
    assert obj.tag_scores(model, _batch([1, 3], [1.0, 0.0])).tolist() == pytest.approx([0.75, 0.5])
    # soft labels: y = 0.5 at tag 1 -> -(0.5 ln 3/4 + 0.5 ln 1/4)
    soft = PRMObjective(head="prm_head", label_mode="soft")
    loss, _ = soft.loss(model, _batch([1, 3], [0.5, 0.0]))
    assert float(loss.detach()) == pytest.approx((-(0.5 * math.log(0.75) + 0.5 * math.log(0.25)) + math.log(2)) / 2,
                                        rel=1e-6)


def test_value_head_mse_and_bce():
    # One output: v = sigmoid(x), x = first hidden coordinate. Tag 1: x = ln 3 -> v = 3/4;
    # tag 3: x = 0 -> v = 1/2. Soft targets 0.5 and 1.0:
    # MSE = ((3/4 - 1/2)^2 + (1/2 - 1)^2) / 2 = (1/16 + 1/4) / 2 = 5/32.
    model = FixedHidden(_hidden([[math.log(3), 7.0], [0.0, -2.0]]), [[1.0, 0.0]])
    b = _batch([1, 3], [0.5, 1.0])
    loss, m = PRMObjective(head="value_head", label_mode="soft").loss(model, b)
    assert float(loss.detach()) == pytest.approx(5 / 32, rel=1e-6)
    assert m["p_good"] == pytest.approx(0.625)
    # hard labels: 0.5 >= 0.5 -> 1: ((1/4)^2 + (1/2)^2) / 2 = 5/32 as well; 0.4 -> 0: ((3/4)^2 + 1/4)/2
    loss, _ = PRMObjective(head="value_head").loss(model, _batch([1, 3], [0.4, 1.0]))
    assert float(loss.detach()) == pytest.approx((9 / 16 + 1 / 4) / 2, rel=1e-6)
    # BCE with soft targets: -(0.5 ln 3/4 + 0.5 ln 1/4) and -ln 1/2
    loss, _ = PRMObjective(head="value_head", label_mode="soft", value_loss="bce").loss(model, b)
    want = (-(0.5 * math.log(0.75) + 0.5 * math.log(0.25)) + math.log(2)) / 2
    assert float(loss.detach()) == pytest.approx(want, rel=1e-6)
    assert PRMObjective(head="value_head").tag_scores(model, b).tolist() == pytest.approx([0.75, 0.5])


def test_head_loss_gradient_and_empty_batch():
    model = FixedHidden(_hidden([[0.3, -0.2], [0.1, 0.4]]), [[1.0, 0.0], [0.0, 1.0]], [0.0, 0.0])
    loss, _ = PRMObjective(head="prm_head").loss(model, _batch([1, 3], [1.0, 0.0]))
    loss.backward()
    assert model.score.weight.grad is not None and float(model.score.weight.grad.abs().sum()) > 0
    loss, m = PRMObjective(head="value_head").loss(
        FixedHidden(_hidden([[0.3], [0.1]]), [[1.0]]), _batch([], []))
    assert float(loss.detach()) == 0.0 and m["tags"] == 0.0
    assert head_logits(model, *[_batch([1], [1.0])[k] for k in ("input_ids", "attention_mask", "tag_mask")]).shape == (1, 2)


def test_bad_head_options_name_the_field():
    with pytest.raises(ValueError, match="head must be one of"):
        PRMObjective(head="pairwise")
    with pytest.raises(ValueError, match="value_loss"):
        PRMObjective(head="value_head", value_loss="l1")
    with pytest.raises(ValueError, match="readout"):
        PRMObjective(head="prm_head", readout="likelihood")


@pytest.mark.parametrize("head", ["prm_head", "value_head"])
def test_trained_head_folder_loads_as_its_reward(tmp_path, head):
    """Train a micro head PRM a few steps; the folder's prm_config.json names its kind; the
    reward of that name loads it and its incremental scores equal the training read-out."""
    from lrm_builtin.tasks.arith import ArithTask
    from lrm_engine.models.loading import ModelLoadError
    from lrm_engine.rewards.factories import make_prm_head, make_prm_token, make_value_head
    from lrm_engine.train import train_prm
    from lrm_engine.train.prm import score_steps
    from lrm_engine.train.prm_data import oracle_prm_records

    task = ArithTask()
    records = oracle_prm_records(task, "train", limit=64)
    obj = PRMObjective(head=head)
    res = train_prm(tmp_path / "run", records=records, task=task, objective=obj, model_size="micro",
                    train={"total_steps": 6, "micro_batch_size": 16, "save_every": 0, "tensorboard": False,
                           "progress": False}, evaluate=False)
    model_dir = res.model_dir
    doc = json.loads((tmp_path / "run" / "model" / "prm_config.json").read_text())
    assert doc["kind"] == head and doc["step_tag"] == task.step.delimiter
    assert doc["num_labels"] == (2 if head == "prm_head" else 1)
    assert res.losses[0] != res.losses[-1]

    make = make_prm_head if head == "prm_head" else make_value_head
    reward = make(path=model_dir)
    other = make_value_head if head == "prm_head" else make_prm_head
    with pytest.raises(ModelLoadError, match=f"trained as a {head}"):
        other(path=model_dir)
    with pytest.raises(ModelLoadError, match=f"trained as a {head}"):
        make_prm_token(path=model_dir)

    # the full-forward training read-out vs the reward's incremental path scoring
    sol = task.noisy_solutions("test", fraction=0.0, seed=0, limit=1)[0]
    steps = list(sol.steps)
    prompt = task.prompt(sol.example.problem)
    want = score_steps(reward.model, reward.tokenizer, [(prompt, steps)], good_token_id=0, bad_token_id=1,
                       step_tag=task.step.delimiter, head=head)[0]
    ids = [torch.tensor(reward.tokenizer.encode(prompt, add_special_tokens=False), dtype=torch.long)]
    bos = reward.tokenizer.bos_token_id
    if bos is not None:
        ids[0] = torch.cat([torch.tensor([bos]), ids[0]])
    tag = reward.tokenizer.encode(task.step.delimiter, add_special_tokens=False)
    for s in steps:
        ids.append(torch.tensor(reward.tokenizer.encode(s, add_special_tokens=False) + tag, dtype=torch.long))
    got = reward.score_full([ids])[0].tolist()
    assert got == pytest.approx(want, abs=1e-5)
