"""objective=orm: TRL prompt/completion/label data, the label at the final step tag only (golden),
records from `lrm search` results, and the trained folder read back by reward=orm."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from conftest import run_lrm
from lrm_engine.objectives.orm import ORMObjective
from lrm_engine.tokenization import build_char_tokenizer
from lrm_engine.train.orm_data import (ORMDataset, ORMRecord, load_orm_jsonl, orm_records_from_results,
                                       validate_orm_record)
from lrm_engine.train.prm_data import collate_prm
from test_prm_heads_train import FixedHidden


def test_units_keep_only_the_final_tag():
    tok = build_char_tokenizer()
    recs = [ORMRecord("1+2=\n", "1+2=3\nAnswer: 3\n", 1.0).to_prm_record("\n"),
            ORMRecord("4*2=\n", "4*2=9\nAnswer: 9\n", 0.0).to_prm_record("\n")]
    assert recs[0].completions == ("1+2=3", "Answer: 3") and recs[0].labels == (1.0, 1.0)
    ds = ORMDataset(recs, tok, step_tag="\n", max_length=64)
    u = ds.units[0]
    # <bos> "1+2=\n" "1+2=3" "\n" "Answer: 3" "\n": the last tag is the last position
    n = 1 + len("1+2=\n") + len("1+2=3") + 1 + len("Answer: 3") + 1
    assert len(u.input_ids) == n and u.tag_positions == [n - 1] and u.tag_labels == [1.0]
    assert ds.num_steps == 2 and ds.num_good == 1
    # a solution whose final tag is cut is dropped, not trained with its label on an earlier step
    # (first tags at position 11 fit in 16, the final ones at 21 do not; "1=\n" "Answer: 1" ends at 13)
    short = ORMRecord("1=\n", "Answer: 1\n", 1.0).to_prm_record("\n")
    cut = ORMDataset(recs + [short], tok, step_tag="\n", max_length=16)
    assert cut.dropped == 2 and [u.index for u in cut.units] == [2] and cut.units[0].tag_positions == [13]
    with pytest.raises(ValueError, match="no solution fits"):
        ORMDataset(recs, tok, step_tag="\n", max_length=16)


def test_orm_loss_reads_the_final_tag_only():
    """prm_head ORM: logits at the final tags (z_bad, z_good) = (0, ln 3) [label 1] and (0, 0)
    [label 0] -> loss (ln 4/3 + ln 2) / 2; the intermediate tags' (huge) logits do not enter."""
    tok = build_char_tokenizer()
    recs = [ORMRecord("p\n", "a\nb\n", 1.0).to_prm_record("\n"), ORMRecord("p\n", "c\nd\n", 0.0).to_prm_record("\n")]
    ds = ORMDataset(recs, tok, step_tag="\n", max_length=32)
    batch = collate_prm(ds.units, tok.pad_token_id)
    B, T = batch["input_ids"].shape
    h = torch.full((B, T, 2), 50.0)  # every position: far from the hand values
    for b, u in enumerate(ds.units):
        h[b, u.tag_positions[0]] = torch.tensor([0.0, math.log(3) if b == 0 else 0.0])
    model = FixedHidden(h, [[1.0, 0.0], [0.0, 1.0]], [0.0, 0.0])
    loss, m = ORMObjective(head="prm_head").loss(model, batch)
    assert float(loss.detach()) == pytest.approx((math.log(4 / 3) + math.log(2)) / 2, rel=1e-6)
    assert m["tags"] == 2.0


def test_records_and_errors(tmp_path):
    assert validate_orm_record({"prompt": "p", "completion": "x\n", "label": True}).label == 1.0
    assert validate_orm_record({"prompt": "p", "completion": "x", "label": 0.25, "id": "a#1"}).meta == {"id": "a#1"}
    for bad, why in (({"prompt": "p", "completion": "x"}, "missing"),
                     ({"prompt": "p", "completion": "x", "label": 2}, "label"),
                     ({"prompt": "p", "completion": " ", "label": True}, "empty"),
                     ({"prompt": 1, "completion": "x", "label": True}, "prompt")):
        with pytest.raises(ValueError, match=why):
            validate_orm_record(bad)
    f = tmp_path / "orm.jsonl"
    f.write_text('{"prompt": "p", "completion": "a", "label": true}\nnot json\n'
                 '{"prompt": "p", "completion": "b", "label": "yes"}\n\n')
    rep = load_orm_jsonl(f)
    assert len(rep.records) == 1 and rep.skipped == 2
    assert rep.errors[0].startswith(f"{f}:2:") and rep.errors[1].startswith(f"{f}:3:")


def test_records_from_search_results(tmp_path):
    from lrm_builtin.tasks.arith import ArithTask

    task = ArithTask()
    sols = task.noisy_solutions("train", fraction=0.0, seed=0, limit=2)
    good = [task.step.join_steps(s.steps) for s in sols]
    wrong = good[0].rsplit("Answer: ", 1)[0] + "Answer: 100000\n"
    res = tmp_path / "results.jsonl"
    res.write_text("\n".join(json.dumps(r) for r in [
        {"id": sols[0].example.problem.id, "solution": good[0],
         "candidates": [{"text": good[0]}, {"text": wrong}, {"text": good[0]}]},
        {"id": sols[1].example.problem.id, "solution": good[1], "candidates": []},
    ]) + "\n")
    recs = orm_records_from_results(res, task, "train")
    assert [(r.completion, r.label) for r in recs] == [(good[0], 1.0), (wrong, 0.0), (good[1], 1.0)]
    assert [r.meta["id"] for r in recs] == [f"{sols[0].example.problem.id}#0", f"{sols[0].example.problem.id}#1",
                                            f"{sols[1].example.problem.id}#0"]
    assert recs[0].prompt == task.prompt(sols[0].example.problem)
    with pytest.raises(ValueError, match="not in split"):
        orm_records_from_results(res, task, "test")


@pytest.mark.parametrize("head", ["prm_token", "value_head"])
def test_trained_orm_loads_as_reward_orm(tmp_path, head):
    from lrm_builtin.tasks.arith import ArithTask
    from lrm_engine.models.loading import ModelLoadError
    from lrm_engine.rewards.family_factories import make_orm
    from lrm_engine.rewards.outcome import OutcomeRM
    from lrm_engine.train.orm import train_orm
    from lrm_engine.train.orm_data import oracle_orm_records
    from lrm_engine.train.prm import score_steps

    task = ArithTask()
    recs = oracle_orm_records(task, "train", limit=64)
    assert 0 < sum(r.label for r in recs) < len(recs)
    res = train_orm(tmp_path / "run", records=recs, task=task, objective=ORMObjective(head=head),
                    model_size="micro", train={"total_steps": 6, "micro_batch_size": 16, "save_every": 0,
                                               "tensorboard": False, "progress": False})
    mdir = Path(res.model_dir)
    doc = json.loads((mdir / "orm_config.json").read_text())
    assert doc["kind"] == "orm" and doc["head"] == head and doc["step_tag"] == "\n"
    assert not (mdir / "prm_config.json").exists()
    assert json.loads((tmp_path / "run" / "run_config.json").read_text())["num_steps"] == 64  # one tag each

    orm = make_orm(path=str(mdir), head=head)
    assert isinstance(orm, OutcomeRM)
    assert make_orm(path=str(mdir), head=None).inner.name == orm.inner.name  # head from orm_config.json
    other = "prm_head" if head != "prm_head" else "prm_token"
    with pytest.raises(ModelLoadError, match=f"reward.head={head}"):
        make_orm(path=str(mdir), head=other)
    # the reward's read-out at the final tag equals the training read-out there
    sol = task.noisy_solutions("test", fraction=0.0, seed=0, limit=1)[0]
    prompt, steps = task.prompt(sol.example.problem), list(sol.steps)
    inner = orm.inner
    want = score_steps(inner.model, inner.tokenizer, [(prompt, steps)], good_token_id=doc.get("good_token_id") or 0,
                       bad_token_id=doc.get("bad_token_id") or 1, step_tag="\n", head=head)[0][-1]
    tok = inner.tokenizer
    ids = [torch.tensor([tok.bos_token_id] + tok.encode(prompt, add_special_tokens=False))]
    ids += [torch.tensor(tok.encode(s, add_special_tokens=False) + tok.encode("\n", add_special_tokens=False))
            for s in steps]
    assert float(inner.score_full([ids])[0][-1]) == pytest.approx(want, abs=1e-5)


def test_lrm_train_objective_orm_from_a_trl_file(tmp_path):
    from lrm_builtin.tasks.arith import ArithTask

    task = ArithTask(num_train=200, num_test=40)
    sols = task.noisy_solutions("train", fraction=0.5, seed=0, limit=40)
    data = tmp_path / "orm.jsonl"
    with open(data, "w") as f:
        for s in sols:
            text = task.step.join_steps(s.steps)
            f.write(json.dumps({"prompt": task.prompt(s.example.problem), "completion": text,
                                "label": bool(task.grade(s.example, text)), "id": s.example.problem.id}) + "\n")
        f.write('{"prompt": "x"}\n')
    r = run_lrm("train", "objective=orm", "task=arith", f"objective.data={data}", f"runtime.output_dir={tmp_path}",
                "runtime.num_threads=1", "runtime.progress=false", "task.num_train=200", "task.num_test=40",
                "objective.model.size=micro", "objective.train.total_steps=4",
                "objective.train.micro_batch_size=8", "objective.train.warmup_steps=1", timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["objective"] == "orm" and out["steps"] == 4
    assert out["data"]["records"] == 40 and out["data"]["skipped"] == 1
    assert "1 malformed ORM records skipped" in r.stderr
    assert (Path(out["model_dir"]) / "orm_config.json").is_file()
    missing = run_lrm("train", "objective=orm", "task=arith", "objective.data=/nonexistent.jsonl",
                      f"runtime.output_dir={tmp_path}", timeout=60)
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert "objective.data='/nonexistent.jsonl'" in missing.stderr
