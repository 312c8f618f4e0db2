"""SFT objective, tokenizer, SFT data building: masking, golden loss, padding, packing."""

from __future__ import annotations

import math

import pytest
import torch

from lrm_engine.core.interfaces import Example, Problem, StepConvention
from lrm_engine.models_tiny import count_parameters, make_tiny_llama
from lrm_engine.objectives import FACTORIES, Objective, SFTObjective
from lrm_engine.objectives.sft import sft_loss
from lrm_engine.tokenization import build_char_tokenizer, load_tokenizer, save_tokenizer, single_token_id
from lrm_engine.train.data import (IGNORE_INDEX, SFTDataset, SFTExample, collate_sft,
                                   sft_examples_from_task, tokenize_sft)

ARITH_TEXT = "((12+7)*3)-15=\n12+7=19\n19*3=57\n57-15=42\nAnswer: 42\n"


@pytest.fixture(scope="module")
def tok():
    return build_char_tokenizer()


@pytest.fixture(scope="module")
def micro(tok):
    torch.manual_seed(0)
    m = make_tiny_llama("micro", tokenizer=tok, seed=1)
    m.eval()
    return m


# --------------------------------------------------------------------------- tokenizer


def test_tokenizer_round_trip_and_delimiter(tok, tmp_path):
    ids = tok.encode(ARITH_TEXT, add_special_tokens=False)
    assert len(ids) == len(ARITH_TEXT)  # character level
    assert tok.decode(ids) == ARITH_TEXT
    assert tok.unk_token_id not in ids
    nl = single_token_id(tok, "\n")
    assert ids.count(nl) == ARITH_TEXT.count("\n")
    with_bos = tok.encode(ARITH_TEXT)
    assert with_bos[0] == tok.bos_token_id and with_bos[1:] == ids
    assert tok.decode(with_bos, skip_special_tokens=True) == ARITH_TEXT
    assert {tok.pad_token_id, tok.bos_token_id, tok.eos_token_id} == {0, 1, 2}
    save_tokenizer(tok, tmp_path / "tk")
    tok2 = load_tokenizer(tmp_path / "tk")
    assert tok2.encode(ARITH_TEXT) == with_bos
    assert tok2.decode(with_bos, skip_special_tokens=True) == ARITH_TEXT
    assert (tok2.bos_token, tok2.eos_token, tok2.pad_token) == ("<bos>", "<eos>", "<pad>")
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(str(tmp_path / "tk")).encode(ARITH_TEXT) == with_bos


def test_tokenizer_extra_delimiter():
    tk = build_char_tokenizer(extra_chars="§")
    assert single_token_id(tk, "§") == len(tk) - 1
    with pytest.raises(ValueError):
        single_token_id(build_char_tokenizer(), "§")  # unknown -> <unk>
    with pytest.raises(ValueError):
        single_token_id(tk, "ab")


def test_tiny_model_sizes(tok):
    assert 1_000_000 <= count_parameters(make_tiny_llama("tiny", tokenizer=tok)) <= 3_000_000
    assert 5_000_000 <= count_parameters(make_tiny_llama("small", tokenizer=tok)) <= 8_000_000
    a, b = make_tiny_llama("micro", tokenizer=tok, seed=3), make_tiny_llama("micro", tokenizer=tok, seed=3)
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))
    with pytest.raises(ValueError, match="sizes are"):
        make_tiny_llama("huge", tokenizer=tok)


# --------------------------------------------------------------------------- the loss


def test_golden_loss_by_hand():
    logits = torch.tensor([[[0.0, 1.0, 2.0], [1.0, 0.0, -1.0], [0.5, 0.5, 0.0], [3.0, 0.0, 0.0]]])
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 2, 1]])
    # Supervised: position 1 predicts label 2, position 2 predicts label 1.
    l1 = -(-1.0 - math.log(math.exp(1.0) + math.exp(0.0) + math.exp(-1.0)))
    l2 = -(0.5 - math.log(2 * math.exp(0.5) + math.exp(0.0)))
    loss, m = sft_loss(logits, labels)
    assert loss.item() == pytest.approx((l1 + l2) / 2, abs=1e-6)
    assert m["tokens"] == 2.0
    # position 1's argmax is 0 (wrong), position 2's argmax is 0 (label 1: wrong)
    assert m["token_acc"] == 0.0


def test_prompt_tokens_are_masked(tok):
    a = SFTExample("12+7=\n", "12+7=19\nAnswer: 19\n")
    b = SFTExample("13+7=\n", "12+7=19\nAnswer: 19\n")  # one prompt character changed
    c = SFTExample("12+7=\n", "12+7=18\nAnswer: 19\n")  # one completion character changed
    ta, tb, tc = (tokenize_sft(tok, e, 64) for e in (a, b, c))
    n_prompt = len(tok.encode(a.prompt))
    assert ta[1][:n_prompt] == [IGNORE_INDEX] * n_prompt
    assert ta[1][n_prompt:] == ta[0][n_prompt:] and ta[0][-1] == tok.eos_token_id
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(1, len(ta[0]), len(tok), generator=g)

    def loss_of(t):
        return sft_loss(logits, torch.tensor([t[1]]))[0].item()

    assert loss_of(tb) == loss_of(ta)  # prompt target changed -> unchanged
    assert loss_of(tc) != loss_of(ta)  # completion target changed -> changed
    # Logits at positions that predict prompt tokens do not matter either.
    logits2 = logits.clone()
    logits2[0, : n_prompt - 1] += 5 * torch.randn(n_prompt - 1, len(tok), generator=g)
    assert sft_loss(logits2, torch.tensor([ta[1]]))[0].item() == pytest.approx(loss_of(ta), abs=0)
    logits2[0, n_prompt] += 1.0 * torch.arange(len(tok))
    assert sft_loss(logits2, torch.tensor([ta[1]]))[0].item() != loss_of(ta)


def test_padding_is_masked_and_loss_is_per_token_mean(tok, micro):
    obj = SFTObjective()
    exs = [SFTExample("3+4=\n", "3+4=7\nAnswer: 7\n"), SFTExample("(12*3)-5=\n", "12*3=36\n36-5=31\nAnswer: 31\n")]
    ds = SFTDataset(exs, tok, max_length=64)
    with torch.no_grad():
        singles = [obj.loss(micro, collate_sft([u], tok.pad_token_id)) for u in ds.units]
        both_batch = collate_sft(ds.units, tok.pad_token_id)
        both, m = obj.loss(micro, both_batch)
    assert (both_batch["labels"][both_batch["attention_mask"] == 0] == IGNORE_INDEX).all()
    n = [s[1]["tokens"] for s in singles]
    expect = sum(s[0].item() * k for s, k in zip(singles, n)) / sum(n)
    assert both.item() == pytest.approx(expect, abs=1e-5)
    assert m["tokens"] == sum(n) == obj.loss_weight(both_batch)


def test_packing_matches_unpacked(tok, micro):
    obj = SFTObjective()
    exs = [SFTExample("3+4=\n", "3+4=7\nAnswer: 7\n"), SFTExample("(12*3)-5=\n", "12*3=36\n36-5=31\nAnswer: 31\n"),
           SFTExample("9/3=\n", "9/3=3\nAnswer: 3\n")]
    plain = SFTDataset(exs, tok, max_length=64)
    packed = SFTDataset(exs, tok, max_length=64, pack=True)
    assert len(packed) == 2 and packed.units[0].examples == [0, 1]
    with torch.no_grad():
        lp, mp = obj.loss(micro, collate_sft(plain.units, tok.pad_token_id))
        pb = collate_sft(packed.units, tok.pad_token_id)
        lk, mk = obj.loss(micro, pb)
    assert "attention_mask" not in pb and pb["num_tokens"] == plain.num_tokens
    assert mk["tokens"] == mp["tokens"]
    assert lk.item() == pytest.approx(lp.item(), abs=1e-5)  # no cross-talk between packed examples


def test_fully_masked_batch_is_zero_not_nan(tok, micro):
    batch = collate_sft(SFTDataset([SFTExample("1+1=\n", "2\n")], tok, 64).units, tok.pad_token_id)
    batch["labels"][:] = IGNORE_INDEX
    m = make_tiny_llama("micro", tokenizer=tok)
    loss, metrics = SFTObjective().loss(m, batch)
    loss.backward()
    assert loss.item() == 0.0 and metrics["tokens"] == 0.0
    assert all(torch.isfinite(p.grad).all() and p.grad.abs().sum() == 0 for p in m.parameters() if p.grad is not None)


def test_objective_protocol_and_factory():
    obj = FACTORIES["sft"](label_smoothing=0.0)
    assert isinstance(obj, Objective) and obj.name == "sft"
    with pytest.raises(TypeError):
        FACTORIES["sft"](bogus=1)


# --------------------------------------------------------------------------- data from a task


class FakeTask:
    name = "fake"
    step = StepConvention()

    def examples(self, split):
        for i in range(5):
            a, b = i + 1, 2 * i + 3
            yield Example(Problem(f"p{i}", f"{a}+{b}="), str(a + b), (f"{a}+{b}={a + b}", f"Answer: {a + b}"))

    def prompt(self, problem):
        return problem.question + "\n"

    def grade(self, example, solution):
        return self.step.extract_answer(solution) == example.reference


def test_sft_examples_from_fake_task():
    exs = sft_examples_from_task(FakeTask(), "train", limit=3)
    assert len(exs) == 3
    assert exs[0].prompt == "1+3=\n" and exs[0].completion == "1+3=4\nAnswer: 4\n"
    assert exs[0].meta["error_step"] == -1
    with pytest.raises(ValueError, match="noisy_solutions"):
        sft_examples_from_task(FakeTask(), "train", noise_fraction=0.5)


def test_sft_examples_from_arith_with_noise(tok):
    arith = pytest.importorskip("lrm_builtin.tasks.arith")
    task = arith.ArithTask(num_train=200, num_test=10)
    exs = sft_examples_from_task(task, "train", limit=100, noise_fraction=0.3, noise_seed=1)
    assert len(exs) == 100
    bad = [e for e in exs if e.meta["error_step"] >= 0]
    assert len(bad) == 30
    for e in exs[:20]:
        steps = task.step.split_steps(e.completion)
        ex = next(x for x in task.examples("train") if x.problem.id == e.meta["id"])
        assert task.first_error(ex, steps) == e.meta["error_step"]
        ids = tok.encode(e.prompt + e.completion, add_special_tokens=False)
        assert tok.unk_token_id not in ids and tok.decode(ids) == e.prompt + e.completion
