"""The ``prm`` objective (token-level PRM loss at step tags) and PRM data.

Golden values are computed in the test from the model's full logits (log-softmax over the two
label rows written out with math.log/math.exp), not by calling the objective's code.
"""

from __future__ import annotations

import json
import logging
import math

import pytest
import torch

from lrm_engine.models_tiny import make_tiny_llama
from lrm_engine.objectives import FACTORIES, Objective, PRMObjective
from lrm_engine.objectives.prm import prm_loss
from lrm_engine.tokenization import build_char_tokenizer, single_token_id
from lrm_engine.train.prm import score_steps
from lrm_engine.train.prm_data import (PRMBatchSource, PRMDataset, PRMRecord, PRMRecordError,
                                       collate_prm, load_prm_jsonl, oracle_prm_records,
                                       tokenize_prm, validate_prm_record, write_prm_jsonl)

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tok():
    return build_char_tokenizer()


@pytest.fixture(scope="module")
def one_layer(tok):
    m = make_tiny_llama("micro", tokenizer=tok, seed=3, num_hidden_layers=1)
    m.eval()
    return m


def _batch(tok):
    """Two sequences (the second padded) with tags at the "\\n" after each step."""
    recs = [PRMRecord("3+4*2=\n", ("4*2=8", "3+8=11", "Answer: 11"), (1.0, 1.0, 1.0)),
            PRMRecord("9-5=\n", ("9-5=5", "Answer: 5"), (0.0, 0.0))]
    units = [tokenize_prm(tok, r.prompt, r.completions, r.labels, "\n", 128, i)
             for i, r in enumerate(recs)]
    return collate_prm(units, tok.pad_token_id), units


def _hand_loss(logits, tags, labels, good, bad, soft=False, thr=0.5):
    """-mean(y log p_good + (1-y) log p_bad), p over the two rows only, by hand."""
    total = 0.0
    for (b, t), y in zip(tags, labels):
        zg, zb = float(logits[b, t, good]), float(logits[b, t, bad])
        m = max(zg, zb)
        lse = m + math.log(math.exp(zg - m) + math.exp(zb - m))
        target = y if soft else (1.0 if y >= thr else 0.0)
        total += -(target * (zg - lse) + (1 - target) * (zb - lse))
    return total / len(tags)


# --------------------------------------------------------------------------- golden loss


def test_golden_loss_matches_hand_computation(tok, one_layer):
    batch, units = _batch(tok)
    obj = PRMObjective()
    good, bad = obj.resolve_tokens(tok)
    assert (good, bad) == (single_token_id(tok, "+"), single_token_id(tok, "-"))
    assert isinstance(obj, Objective)
    tags = [(b, t) for b, u in enumerate(units) for t in u.tag_positions]
    labels = [y for u in units for y in u.tag_labels]
    assert len(tags) == 5 and labels == [1, 1, 1, 0, 0]
    nl = single_token_id(tok, "\n")
    assert all(int(batch["input_ids"][b, t]) == nl for b, t in tags)  # tags sit on the delimiter
    with torch.no_grad():
        logits = one_layer(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        want = _hand_loss(logits, tags, labels, good, bad)
        loss, m = obj.loss(one_layer, batch)
    assert float(loss) == pytest.approx(want, rel=1e-5, abs=1e-6)
    assert m["tags"] == 5 and m["good_frac"] == pytest.approx(0.6)
    # the full-logits path gives the same value
    full = PRMObjective(full_logits=True, good_token_id=good, bad_token_id=bad)
    with torch.no_grad():
        assert float(full.loss(one_layer, batch)[0]) == pytest.approx(want, rel=1e-5, abs=1e-6)
    # loss weight: the number of tags
    assert obj.loss_weight(batch) == 5.0


def test_golden_soft_and_threshold(tok, one_layer):
    batch, units = _batch(tok)
    tags = [(b, t) for b, u in enumerate(units) for t in u.tag_positions]
    soft = [0.9, 0.6, 0.25, 0.0, 1.0]
    for (b, t), y in zip(tags, soft):
        batch["step_labels"][b, t] = y
    obj = PRMObjective(label_mode="soft")
    good, bad = obj.resolve_tokens(tok)
    hard = PRMObjective(label_mode="hard", hard_threshold=0.7)
    hard.resolve_tokens(tok)
    with torch.no_grad():
        logits = one_layer(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        assert float(obj.loss(one_layer, batch)[0]) == pytest.approx(
            _hand_loss(logits, tags, soft, good, bad, soft=True), rel=1e-5)
        assert float(hard.loss(one_layer, batch)[0]) == pytest.approx(
            _hand_loss(logits, tags, soft, good, bad, thr=0.7), rel=1e-5)


def test_prm_loss_on_given_logits():
    z = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    y = torch.tensor([1.0, 1.0])
    loss, m = prm_loss(z, y)
    want = (math.log(1 + math.exp(-2.0)) + math.log(1 + math.exp(1.0))) / 2
    assert float(loss) == pytest.approx(want, rel=1e-6)
    assert m["step_acc"] == 0.5 and m["tags"] == 2


# --------------------------------------------------------------------------- tag masking


def test_labels_and_tokens_outside_tags_do_not_matter(tok, one_layer):
    batch, units = _batch(tok)
    obj = PRMObjective()
    obj.resolve_tokens(tok)
    with torch.no_grad():
        base = float(obj.loss(one_layer, batch)[0])
        noisy = dict(batch)
        lab = batch["step_labels"].clone()
        g = torch.Generator().manual_seed(0)
        garbage = torch.rand(lab.shape, generator=g) * 7 - 3
        lab[~batch["tag_mask"]] = garbage[~batch["tag_mask"]]
        noisy["step_labels"] = lab
        assert float(obj.loss(one_layer, noisy)[0]) == base
        # padding tokens (masked, after the last tag) are never read
        ids = batch["input_ids"].clone()
        ids[1, len(units[1].input_ids):] = 42
        assert float(obj.loss(one_layer, dict(batch, input_ids=ids))[0]) == pytest.approx(base, abs=1e-6)
        # a label at a tag does matter
        flipped = batch["step_labels"].clone()
        b, t = 0, units[0].tag_positions[0]
        flipped[b, t] = 0.0
        assert float(obj.loss(one_layer, dict(batch, step_labels=flipped))[0]) != base


def test_no_tag_gives_zero_loss_and_zero_gradient(tok):
    m = make_tiny_llama("micro", tokenizer=tok, seed=0, num_hidden_layers=1)
    batch, _ = _batch(tok)
    batch["tag_mask"] = torch.zeros_like(batch["tag_mask"])
    obj = PRMObjective()
    obj.resolve_tokens(tok)
    loss, metrics = obj.loss(m, batch)
    assert float(loss.detach()) == 0.0 and metrics["tags"] == 0
    loss.backward()
    grads = [p.grad for p in m.parameters() if p.grad is not None]
    assert grads and all(torch.count_nonzero(g) == 0 for g in grads)


def test_objective_options_are_checked():
    with pytest.raises(ValueError, match="label_mode"):
        PRMObjective(label_mode="fuzzy")
    with pytest.raises(ValueError, match="differ"):
        PRMObjective(good_token="+", bad_token="+")
    with pytest.raises(RuntimeError, match="resolve_tokens"):
        PRMObjective().token_ids
    assert FACTORIES["prm"](name="prm", label_mode="soft").label_mode == "soft"
    with pytest.raises(TypeError):
        FACTORIES["prm"](bogus=1)


# --------------------------------------------------------------------------- data


def test_tokenize_and_collate(tok):
    u = tokenize_prm(tok, "2+3=\n", ["2+3=5", "Answer: 5"], [1.0, 0.0], "\n", 64)
    text = "2+3=\n2+3=5\nAnswer: 5\n"
    assert u.input_ids == [tok.bos_token_id] + tok.encode(text, add_special_tokens=False)
    # the "\n" after each step (not the prompt's)
    assert u.tag_positions == [1 + len("2+3=\n2+3=5"), 1 + len("2+3=\n2+3=5\nAnswer: 5")]  # +1: <bos>
    assert u.tag_labels == [1.0, 0.0]
    # truncation keeps the tags that fit; nothing fits -> None
    cut = tokenize_prm(tok, "2+3=\n", ["2+3=5", "Answer: 5"], [1.0, 0.0], "\n", 15)
    assert cut.tag_positions == [11] and len(cut.input_ids) == 15
    assert tokenize_prm(tok, "2+3=\n", ["2+3=5"], [1.0], "\n", 8) is None
    batch = collate_prm([u, cut], tok.pad_token_id)
    assert batch["input_ids"].shape == (2, len(u.input_ids))
    assert batch["tag_mask"].sum() == 3 and batch["num_tags"] == 3
    assert batch["attention_mask"][1].sum() == 15
    assert batch["step_labels"][0, u.tag_positions[0]] == 1.0


def test_dataset_source_is_resumable(tok):
    recs = [PRMRecord(f"{i}+1=\n", (f"{i}+1={i + 1}", f"Answer: {i + 1}"), (1.0, 1.0)) for i in range(10)]
    ds = PRMDataset(recs, tok)
    a = PRMBatchSource(ds, 3, seed=1)
    seq = [a.next_batch()[1] for _ in range(5)]
    b = PRMBatchSource(ds, 3, seed=1)
    b.next_batch(), b.next_batch()
    c = PRMBatchSource(ds, 3, seed=1)
    c.load_state_dict(b.state_dict())
    assert [c.next_batch()[1] for _ in range(3)] == seq[2:]
    other = PRMBatchSource(PRMDataset(recs[:9], tok), 3, seed=1)
    with pytest.raises(ValueError, match="changed"):
        other.load_state_dict(b.state_dict())


GOOD = {"prompt": "1+2=\n", "completions": ["1+2=3", "Answer: 3"], "labels": [True, True]}


def test_loader_reports_malformed_lines_with_file_and_line(tmp_path, caplog):
    lines = [
        json.dumps(GOOD),                                                      # 1 ok
        "{not json",                                                           # 2
        json.dumps({"prompt": "x", "completions": ["a"]}),                     # 3 missing labels
        json.dumps({"prompt": "x", "completions": ["a", "b"], "labels": [1]}),  # 4 mismatch
        "",                                                                    # 5 blank: ignored
        json.dumps({"prompt": "x", "completions": ["a"], "labels": [1.5]}),     # 6 out of range
        json.dumps({"prompt": "x", "completions": [], "labels": []}),           # 7 empty
        json.dumps([1, 2]),                                                    # 8 not an object
        json.dumps({"prompt": 3, "completions": ["a"], "labels": [0]}),         # 9 prompt type
        json.dumps({"prompt": "x", "completions": ["a"], "labels": ["yes"]}),   # 10 label type
        json.dumps({**GOOD, "labels": [0.25, 1], "id": "p7"}),                 # 11 ok (soft)
    ]
    path = tmp_path / "prm.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with caplog.at_level(logging.WARNING, logger="lrm_engine.train"):
        rep = load_prm_jsonl(path)
    assert len(rep.records) == 2 and rep.skipped == 8
    bad_lines = [int(e.split(":")[1]) for e in rep.errors]
    assert bad_lines == [2, 3, 4, 6, 7, 8, 9, 10]
    assert all(e.startswith(f"{path}:") for e in rep.errors)
    assert "missing key(s) ['labels']" in rep.errors[1] and "2 completions but 1 labels" in rep.errors[2]
    assert f"{path}:6" in caplog.text
    assert rep.records[0].labels == (1.0, 1.0)
    assert rep.records[1].labels == (0.25, 1.0) and rep.records[1].meta == {"id": "p7"}
    assert len(load_prm_jsonl(path, limit=1).records) == 1


def test_write_and_read_round_trip(tmp_path):
    recs = [validate_prm_record(GOOD), PRMRecord("p", ("a", "b"), (0.5, 0.0), {"id": 1})]
    write_prm_jsonl(tmp_path / "o.jsonl", recs)
    back = load_prm_jsonl(tmp_path / "o.jsonl")
    assert back.skipped == 0 and back.records == recs
    first = json.loads((tmp_path / "o.jsonl").read_text().splitlines()[0])
    assert first["labels"] == [True, True]  # hard labels stay bools (TRL format)
    with pytest.raises(PRMRecordError):
        validate_prm_record({"prompt": "p"})


def test_oracle_records_use_exact_prefix_labels():
    from lrm_builtin.tasks.arith import ArithTask

    task = ArithTask(num_train=60, num_test=10)
    recs = oracle_prm_records(task, "train", limit=40, noise_fraction=0.5, noise_seed=0)
    assert len(recs) == 40
    exs = {e.problem.id: e for e in task.examples("train")}
    n_bad = 0
    for r in recs:
        ex = exs[r.meta["id"]]
        assert r.prompt == task.prompt(ex.problem)
        assert list(r.labels) == [float(v) for v in task.prefix_labels(ex, r.completions)]
        k = r.meta["error_step"]
        if k >= 0:
            n_bad += 1
            assert r.labels[:k] == (1.0,) * k and set(r.labels[k:]) == {0.0}
        else:
            assert set(r.labels) == {1.0}
    assert n_bad == 20


# --------------------------------------------------------------------------- scoring


def test_score_steps_matches_per_solution_forward(tok, one_layer):
    sols = [("3+4*2=\n", ["4*2=8", "3+8=11", "Answer: 11"]), ("9-5=\n", ["9-5=4", "Answer: 4"]),
            ("12*3+100-7=\n", ["12*3=36", "36+100=136", "136-7=129", "Answer: 129"])]
    good, bad = single_token_id(tok, "+"), single_token_id(tok, "-")
    batched = score_steps(one_layer, tok, sols, good_token_id=good, bad_token_id=bad, batch_size=2)
    assert [len(s) for s in batched] == [3, 2, 4]
    for (prompt, steps), got in zip(sols, batched):
        text = prompt + "".join(s + "\n" for s in steps)
        ids = torch.tensor([[tok.bos_token_id] + tok.encode(text, add_special_tokens=False)])
        with torch.no_grad():
            logits = one_layer(input_ids=ids).logits[0]
        nl = single_token_id(tok, "\n")
        tag_pos = [i for i, t in enumerate(ids[0].tolist()) if t == nl][1:]  # skip the prompt's
        want = [1 / (1 + math.exp(float(logits[t, bad] - logits[t, good]))) for t in tag_pos]
        assert got == pytest.approx(want, abs=1e-5)


def test_prm_step_metrics_hand_computed():
    """Golden values worked out by hand (see the comments), nan steps left out."""
    from lrm_engine.train.prm import prm_step_metrics

    scores = [[0.9, 0.2, 0.75], [0.8, 0.7], [float("nan")]]
    labels = [[True, False, False], [True, True], [True]]
    m = prm_step_metrics(scores, labels, [1, -1, -1])
    # positives 0.9 0.8 0.7, negatives 0.2 0.75: 5 of 6 pairs ordered (0.7 < 0.75)
    assert m["step_auroc_raw"] == pytest.approx(5 / 6, abs=1e-6)
    # prefix scores (running min): 0.9 0.2 0.2 | 0.8 0.7 -> negatives 0.2 0.2 below every positive
    assert m["step_auroc"] == pytest.approx(1.0)
    # >= 0.5 agrees with the label on 4 of 5 steps (0.75 is a bad step)
    assert m["step_accuracy"] == pytest.approx(0.8)
    # steps up to the first error: 0.9 0.2 | 0.8 0.7 -> every positive above the one negative
    assert m["error_step_auroc"] == pytest.approx(1.0)
    # score -i: positives 0 0 -1, negatives -1 -2: 5 ordered pairs + one tie (1/2) of 6
    assert m["position_baseline_auroc"] == pytest.approx(5.5 / 6, abs=1e-6)
    assert (m["num_steps"], m["num_good_steps"]) == (5, 3)


# --------------------------------------------------------------------------- likelihood read-out


def _hand_min_logprob(logits, ids, units):
    """Per step (row-major): min over the step's tokens (its first included, predicted at the
    previous tag; the tag excluded) of log p(token | prefix), by hand from the full logits
    (math.log / math.exp per row)."""
    out = []
    for b, u in enumerate(units):
        for s, e in u.step_spans:
            vals = []
            for t in range(s, e):
                row = [float(x) for x in logits[b, t - 1]]
                m = max(row)
                lse = m + math.log(sum(math.exp(x - m) for x in row))
                vals.append(row[int(ids[b, t])] - lse)
            out.append(min(vals) if vals else 0.0)
    return out


def test_likelihood_readout_golden(tok, one_layer):
    batch, units = _batch(tok)
    # step spans exclude the tag: "4*2=8" is 5 characters, the "\n" after it is its tag
    assert [e - s for s, e in units[0].step_spans] == [5, 6, 10]
    assert [e - s for s, e in units[1].step_spans] == [5, 9]
    obj = PRMObjective(readout="likelihood")
    obj.resolve_tokens(tok)
    assert [y for u in units for y in u.tag_labels] == [1.0, 1.0, 1.0, 0.0, 0.0]
    with torch.no_grad():
        logits = one_layer(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        x = _hand_min_logprob(logits, batch["input_ids"], units)
        # only the steps up to each solution's first bad one enter: the 5th step (bad only
        # because the 4th is) is left out
        want = -(x[0] + x[1] + x[2] + math.log(1 - math.exp(x[3]))) / 4
        loss, m = obj.loss(one_layer, batch)
    assert float(loss) == pytest.approx(want, rel=1e-5)
    assert m["tags"] == 4 and m["p_good"] == pytest.approx(sum(math.exp(v) for v in x[:4]) / 4, rel=1e-5)
    # score_steps reads the same quantity
    sols = [(r_prompt, list(r_steps)) for r_prompt, r_steps in
            [("3+4*2=\n", ("4*2=8", "3+8=11", "Answer: 11")), ("9-5=\n", ("9-5=5", "Answer: 5"))]]
    got = score_steps(one_layer, tok, sols, good_token_id=obj.good_token_id,
                      bad_token_id=obj.bad_token_id, readout="likelihood", batch_size=1)
    assert [v for s in got for v in s] == pytest.approx([math.exp(v) for v in x], rel=1e-5)
    # a good label raises the weakest token's probability, a bad one lowers it
    m2 = make_tiny_llama("micro", tokenizer=tok, seed=3, num_hidden_layers=1)
    opt = torch.optim.SGD(m2.parameters(), lr=0.02)
    for y, sign in ((1.0, 1), (0.0, -1)):
        m2.load_state_dict(one_layer.state_dict())
        for b, u in enumerate(units):
            batch["step_labels"][b, u.tag_positions] = y
        with torch.no_grad():
            before = obj.loss(m2, batch)[1]["p_good"]
        for _ in range(3):
            opt.zero_grad()
            obj.loss(m2, batch)[0].backward()
            opt.step()
        with torch.no_grad():
            after = obj.loss(m2, batch)[1]["p_good"]
        assert sign * (after - before) > 0, (y, before, after)


def test_log1mexp_hand_values():
    from lrm_engine.objectives.prm import log1mexp

    x = torch.tensor([-3.0, -0.5, -1e-3, -20.0, 0.0])
    want = [math.log(1 - math.exp(-3.0)), math.log(1 - math.exp(-0.5)), math.log(1 - math.exp(-1e-3)),
            math.log(1 - math.exp(-20.0)), math.log(1 - math.exp(-1e-6))]
    assert log1mexp(x).tolist() == pytest.approx(want, rel=1e-4)
