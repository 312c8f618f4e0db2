"""The one training loop: schedule, data order, checkpoints, kill-and-resume, learning."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from lrm_engine.models_tiny import make_tiny_llama
from lrm_engine.objectives import SFTObjective
from lrm_engine.tokenization import build_char_tokenizer
from lrm_engine.train import (CosineWithWarmup, DataOrder, SFTBatchSource, SFTDataset, SFTExample,
                              TrainConfig, Trainer, read_data_log, train_sft)
from lrm_engine.train import checkpoint as ckpt


def arith_like(n: int, seed: int = 0) -> list[SFTExample]:
    """Tiny arith-like data: 'a+b*c=' with a two-step solution and an answer line."""
    import random

    rng = random.Random(seed)
    out = []
    for _ in range(n):
        a, b, c = rng.randint(1, 9), rng.randint(1, 9), rng.randint(1, 9)
        out.append(SFTExample(f"{a}+{b}*{c}=\n", f"{b}*{c}={b * c}\n{a}+{b * c}={a + b * c}\nAnswer: {a + b * c}\n"))
    return out


FAST = dict(micro_batch_size=4, lr=3e-3, warmup_steps=2, progress=False, num_threads=1, device="cpu")


# --------------------------------------------------------------------------- pieces


def test_cosine_with_warmup():
    s = CosineWithWarmup(1.0, total_steps=110, warmup_steps=10, min_lr_ratio=0.1)
    assert s.lr_at(0) == pytest.approx(0.1) and s.lr_at(9) == pytest.approx(1.0)
    assert s.lr_at(10) == pytest.approx(1.0)
    assert s.lr_at(60) == pytest.approx(0.55)
    assert s.lr_at(110) == pytest.approx(0.1) and s.lr_at(500) == pytest.approx(0.1)
    assert all(s.lr_at(i) >= s.lr_at(i + 1) for i in range(10, 120))


def test_data_order_is_deterministic_and_covers_epochs():
    o = DataOrder(10, seed=3)
    first = o.take(0, 25)
    assert first == DataOrder(10, seed=3).take(0, 25)
    assert sorted(first[:10]) == list(range(10)) and sorted(first[10:20]) == list(range(10))
    assert first[:10] != first[10:20]  # reshuffled per epoch
    assert o.take(7, 6) == first[7:13]  # a pure function of the position
    assert DataOrder(10, seed=4).take(0, 10) != first[:10]
    assert DataOrder(10, shuffle=False).take(8, 4) == [8, 9, 0, 1]


def test_partial_checkpoints_are_ignored_and_cleaned(tmp_path):
    root = tmp_path / "checkpoints"
    (root / ".tmp-step_9-123").mkdir(parents=True)
    (root / "step_7").mkdir()  # no trainer_state.json: incomplete
    (root / "step_8").mkdir()
    (root / "step_8" / ckpt.STATE_FILE).write_text('{"step": 8, "comp')  # torn write
    assert ckpt.latest_checkpoint(root) is None
    removed = ckpt.clean_partial(root)
    assert len(removed) == 3 and list(root.iterdir()) == []


def test_grad_accumulation_equals_big_batch(tmp_path):
    tok = build_char_tokenizer()
    ds = SFTDataset(arith_like(8), tok, max_length=64)
    params = []
    for mb, acc in ((8, 1), (2, 4)):
        model = make_tiny_llama("micro", tokenizer=tok, seed=0)
        cfg = TrainConfig(total_steps=1, micro_batch_size=mb, grad_accum=acc, lr=1e-2, warmup_steps=0,
                          max_grad_norm=0.0, progress=False, tensorboard=False, device="cpu", num_threads=1)
        Trainer(model, SFTObjective(), SFTBatchSource(ds, mb, shuffle=False), cfg, tmp_path / f"r{mb}").train()
        params.append([p.detach().clone() for p in model.parameters()])
    for a, b in zip(*params):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


class BareObjective:
    """Only the required surface of the protocol: the loop needs nothing else."""

    name = "bare"

    def loss(self, model, batch):
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
        return out.loss, {"hf_loss": float(out.loss.detach())}


def test_bare_objective_bf16_and_tensorboard(tmp_path):
    tok = build_char_tokenizer()
    ds = SFTDataset(arith_like(16), tok, max_length=64)
    model = make_tiny_llama("micro", tokenizer=tok)
    cfg = TrainConfig(total_steps=3, precision="bf16", save_every=2, **FAST)
    res = Trainer(model, BareObjective(), SFTBatchSource(ds, 4), cfg, tmp_path).train()
    assert res.steps == 3 and all(map(lambda x: x == x, res.losses))
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_2", "step_3"]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(tmp_path / "tb"))
    ea.Reload()
    tags = set(ea.Tags()["scalars"])
    assert {"train/loss", "train/lr", "train/tokens_per_s", "train/grad_norm", "objective/hf_loss"} <= tags
    assert [e.step for e in ea.Scalars("train/loss")] == [1, 2, 3]
    # A finished run started again does nothing; resume=False refuses the used folder.
    again = Trainer(model, BareObjective(), SFTBatchSource(ds, 4), cfg, tmp_path).train()
    assert again.steps == 3 and again.losses == []
    with pytest.raises(FileExistsError):
        Trainer(model, BareObjective(), SFTBatchSource(ds, 4), TrainConfig(total_steps=3, resume=False, **FAST),
                tmp_path).train()


def test_resume_refuses_changed_data(tmp_path):
    train = dict(total_steps=2, save_every=1, **FAST)
    train_sft(tmp_path, examples=arith_like(12), model_size="micro", train=train)
    with pytest.raises(ValueError, match="data changed"):
        train_sft(tmp_path, examples=arith_like(13), model_size="micro", train=dict(train, total_steps=4))


def test_loss_decreases_on_arith_like_data(tmp_path):
    res = train_sft(tmp_path, examples=arith_like(400), model_size="micro",
                    train=dict(total_steps=100, micro_batch_size=16, lr=1e-2, warmup_steps=5,
                               save_every=0, progress=False, num_threads=1, device="cpu"))
    assert res.steps == 100
    assert res.final_loss < 0.5 * res.first_loss, (res.first_loss, res.final_loss)
    assert (Path(res.model_dir) / "model.safetensors").is_file()
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(res.model_dir)


# --------------------------------------------------------------------------- kill and resume

DRIVER = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    sys.path.insert(0, {tests!r})
    from test_trainer import arith_like
    from lrm_engine.train import train_sft

    run_dir = Path(sys.argv[1]); pause_at = int(sys.argv[2])
    marker = run_dir / "paused_once"

    def pause(step, metrics):
        # First attempt only: announce the step and wait to be SIGKILLed from outside.
        if step == pause_at and not marker.exists():
            marker.write_text(str(os.getpid()))
            time.sleep(600)

    res = train_sft(run_dir, examples=arith_like(40), model_size="micro", callbacks=[pause],
                    train=dict(total_steps={total}, micro_batch_size=3, save_every=5, keep_last=2,
                               lr=3e-3, warmup_steps=2, progress=False, num_threads=1, device="cpu"))
    print("DONE", res.steps, res.resumed_from)
""")


def _reference_params(run_dir: Path, total: int):
    res = train_sft(run_dir, examples=arith_like(40), model_size="micro",
                    train=dict(total_steps=total, micro_batch_size=3, save_every=5, keep_last=2, lr=3e-3,
                               warmup_steps=2, progress=False, num_threads=1, device="cpu"))
    return res


def test_kill_and_resume_subprocess(tmp_path):
    total, pause_at = 24, 13  # checkpoints at 5, 10; killed at 13 (steps 11-13 logged, not saved)
    script = tmp_path / "driver.py"
    script.write_text(DRIVER.format(tests=str(Path(__file__).parent), total=total))
    run = tmp_path / "run"
    cmd = [sys.executable, str(script), str(run), str(pause_at)]
    env = dict(os.environ, OMP_NUM_THREADS="1")

    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 120
    while not (run / "paused_once").exists():
        assert p.poll() is None, p.stdout.read().decode()[-3000:]
        assert time.time() < deadline, "the first attempt never reached the kill point"
        time.sleep(0.1)
    assert ckpt.latest_checkpoint(run / "checkpoints").name == "step_10"  # a checkpoint exists mid-run
    os.kill(p.pid, signal.SIGKILL)
    p.wait(timeout=30)
    assert p.returncode == -signal.SIGKILL
    assert [r["step"] for r in read_data_log(run)] == list(range(1, pause_at + 1))

    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)  # the same command
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert f"DONE {total} 10" in out.stdout

    log = read_data_log(run)
    assert [r["step"] for r in log] == list(range(1, total + 1))  # every step exactly once
    ref_dir = tmp_path / "ref"
    torch.set_num_threads(1)
    ref = _reference_params(ref_dir, total)
    assert ref.steps == total
    assert log == read_data_log(ref_dir)  # the same batches, in the same order
    # 24 steps * 3 = 72 draws over 40 examples: epoch 1 whole, then 32 of epoch 2, none lost.
    drawn = [e for r in log for e in r["examples"]]
    assert sorted(drawn[:40]) == list(range(40)) and len(set(drawn[40:])) == 32
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_20", "step_24"]
    # The resumed run ends with the weights of the uninterrupted one.
    from safetensors.torch import load_file

    a = load_file(str(run / "checkpoints" / "step_24" / "model.safetensors"))
    b = load_file(str(ref_dir / "checkpoints" / "step_24" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4)
    st = json.loads((run / "checkpoints" / "step_24" / ckpt.STATE_FILE).read_text())
    assert st["step"] == total and st["data"]["position"] == total * 3


def test_restart_before_first_checkpoint_starts_clean(tmp_path):
    # A first attempt that died before its first checkpoint left log lines (one torn).
    (tmp_path / "data_log.jsonl").write_text('{"step": 1, "examples": [0]}\n{"step": 2, "examples": [1]}\n{"st')
    res = train_sft(tmp_path, examples=arith_like(12), model_size="micro",
                    train=dict(total_steps=3, save_every=0, **FAST))
    assert res.steps == 3 and res.resumed_from == 0
    log = read_data_log(tmp_path)
    assert [r["step"] for r in log] == [1, 2, 3] and all(len(r["examples"]) == 4 for r in log)


def test_sharded_sources_split_the_single_process_batches():
    """Data parallel: rank r of W at batch B takes the r-th slice of what one process draws at
    W x B; the position stays global, so the state resumes on any world size."""
    tok = build_char_tokenizer()
    ds = SFTDataset(arith_like(37), tok, max_length=64)
    one = SFTBatchSource(ds, 6, seed=3)
    shards = [SFTBatchSource(ds, 2, seed=3) for _ in range(3)]
    for r, s in enumerate(shards):
        s.shard(r, 3)
    for _ in range(15):  # crosses epoch boundaries (37 units)
        _, ex1 = one.next_batch()
        parts = [s.next_batch()[1] for s in shards]
        assert [e for p in parts for e in p] == ex1
    assert all(s.state_dict() == one.state_dict() for s in shards)
    solo = SFTBatchSource(ds, 6, seed=3)
    solo.load_state_dict(shards[1].state_dict())  # 3 ranks -> 1 process
    assert solo.next_batch()[1] == one.next_batch()[1]
    other = SFTBatchSource(ds, 2, seed=3)  # a different global batch is refused
    with pytest.raises(ValueError, match="micro_batch_size x number of processes"):
        other.load_state_dict(shards[0].state_dict())


def test_train_config_checks_the_strategy():
    from lrm_engine.train import TrainConfig

    assert TrainConfig(strategy="fsdp").strategy == "fsdp"
    with pytest.raises(ValueError, match="strategy must be one of ddp, fsdp"):
        TrainConfig(strategy="zero3")
