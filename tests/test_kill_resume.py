"""kill -9 at a random moment, then the same command again: the records are exactly those of an
uninterrupted run — for `lrm search`, `lrm annotate`, `lrm train` and `lrm run` (real tiny
models; sampling is keyed per problem, lrm_engine/core/rng.py, so a resumed run draws what the
uninterrupted one drew). The kill seed is printed on failure (LRM_KILL_SEED replays it)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lrm_engine.models import save_tiny_llama

REPO = Path(__file__).resolve().parents[1]
SEED = int(os.environ.get("LRM_KILL_SEED", time.time_ns() % 2**31))


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("kill")
    pol = save_tiny_llama(root / "policy", hidden_size=32, initializer_range=0.2)
    prm = save_tiny_llama(root / "prm", seed=1, hidden_size=32, initializer_range=0.2)
    return pol, prm


def _env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "LRM_CACHE": str(tmp_path / "cache")}


def _run(args, tmp_path, timeout=600) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "lrm_engine", *args], capture_output=True, text=True,
                       env=_env(tmp_path), cwd=REPO, timeout=timeout)
    assert r.returncode == 0, f"kill seed {SEED}\n{r.stderr[-3000:]}"
    return r


def _kill_when(args, tmp_path, ready, rng: random.Random, max_delay: float, timeout=300) -> bool:
    """Start the command, wait until ``ready()`` (some output is written), sleep a random
    moment, SIGKILL it. Returns whether it was still running when killed."""
    proc = subprocess.Popen([sys.executable, "-m", "lrm_engine", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=_env(tmp_path), cwd=REPO)
    deadline = time.monotonic() + timeout
    while not ready() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(rng.uniform(0.0, max_delay))
    alive = proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return alive


def _lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def _rounded(x):
    """Floats to 5 decimals (batched float32 rounding), batch-level KV peaks and wall times out."""
    if isinstance(x, float):
        return round(x, 5)
    if isinstance(x, dict):
        return {k: _rounded(v) for k, v in x.items() if "peak" not in k and not k.startswith("wall")}
    if isinstance(x, list):
        return [_rounded(v) for v in x]
    return x


def _records(path: Path, key: str = "id") -> dict:
    recs = [json.loads(x) for x in path.read_text().splitlines()]
    ids = [r[key] for r in recs]
    assert len(ids) == len(set(ids)), f"kill seed {SEED}: a record written twice"
    return {r[key]: _rounded(r) for r in recs}


def test_search_killed_and_resumed_equals_uninterrupted(models, tmp_path):
    pol, prm = models
    rng = random.Random(SEED)

    def args(out):
        return ["search", "task=arith", "task.num_test=30", "task.num_train=10", "policy=hf",
                f"policy.path={pol}", "policy.max_step_tokens=6", "reward=prm_token",
                f"reward.path={prm}", "search=best_of_n", "search.n=3", "search_run.limit=16",
                "search_run.max_steps=3", "search_run.batch_size=2", f"runtime.output_dir={out}",
                "runtime.progress=false", "kernels=reference"]

    out = tmp_path / "killed"
    res = out / "results.jsonl"
    assert _kill_when(args(out), tmp_path, lambda: _lines(res) >= 2, rng, 0.3), f"seed {SEED}"
    assert _lines(res) < 16, f"kill seed {SEED}: the kill came after the run ended"
    _run(args(out), tmp_path)
    _run(args(tmp_path / "ref"), tmp_path)
    got, ref = _records(res), _records(tmp_path / "ref" / "results.jsonl")
    assert len(got) == 16 and got == ref, f"kill seed {SEED}"


def test_annotate_killed_and_resumed_equals_uninterrupted(models, tmp_path):
    pol, _ = models
    rng = random.Random(SEED + 1)

    def args(out):
        return ["annotate", "task=arith", "task.num_test=10", "task.num_train=30", "policy=hf",
                f"policy.path={pol}", "policy.max_step_tokens=6", "annotate=mc_rollout",
                "annotate.num_rollouts=3", "search_run.limit=12", "search_run.max_steps=3",
                "search_run.batch_size=2", f"runtime.output_dir={out}", "runtime.progress=false",
                "kernels=reference"]

    out = tmp_path / "killed"
    res = out / "prm.jsonl"
    _kill_when(args(out), tmp_path, lambda: _lines(res) >= 2, rng, 0.3)
    _run(args(out), tmp_path)
    _run(args(tmp_path / "ref"), tmp_path)
    got, ref = _records(res), _records(tmp_path / "ref" / "prm.jsonl")
    assert len(got) >= 12 and got == ref, f"kill seed {SEED}"


def test_train_killed_and_resumed_equals_uninterrupted(tmp_path):
    from safetensors.torch import load_file

    rng = random.Random(SEED + 2)

    def args(out):
        return ["train", "objective=sft", "task=arith", "task.num_train=200", "objective.model.size=micro",
                "objective.num_examples=64", "objective.train.total_steps=300",
                "objective.train.save_every=10", "objective.train.micro_batch_size=4",
                "objective.run_name=sft", f"runtime.output_dir={out}", "runtime.progress=false"]

    out = tmp_path / "killed"
    ckpts = out / "train" / "sft" / "checkpoints"
    assert _kill_when(args(out), tmp_path, lambda: ckpts.is_dir() and any(ckpts.iterdir()), rng, 0.5), \
        f"kill seed {SEED}: the run ended before the kill"
    _run(args(out), tmp_path)
    _run(args(tmp_path / "ref"), tmp_path)
    a = load_file(str(out / "train" / "sft" / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "ref" / "train" / "sft" / "model" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=f"kill seed {SEED}: {k}")
    ra = json.loads((out / "train" / "sft" / "result.json").read_text())
    rb = json.loads((tmp_path / "ref" / "train" / "sft" / "result.json").read_text())
    assert ra["steps"] == rb["steps"] == 300 and ra["resumed_from"] is not None
    # The resumed invocation's losses are the uninterrupted run's from the checkpoint on.
    assert ra["losses"] == pytest.approx(rb["losses"][-len(ra["losses"]):], abs=1e-6)


@pytest.mark.timeout(1500)
def test_lrm_run_killed_twice_and_resumed_equals_uninterrupted(tmp_path):
    from test_pipeline import TOY

    rng = random.Random(SEED + 3)

    def args(out):
        return ["run", *TOY, "pipeline.install_defaults=false", f"runtime.output_dir={out}",
                "runtime.progress=false"]

    out = tmp_path / "killed"
    run = out / "toy"
    # Once in the middle of a training stage, once during the annotation or the sweep.
    _kill_when(args(out), tmp_path, lambda: any(run.glob("sft-*/checkpoints/*")), rng, 0.5)
    _kill_when(args(out), tmp_path, lambda: any(run.glob("annotate-*/prm.jsonl"))
               or any(run.glob("sweep-*/*.jsonl")), rng, 1.0)
    _run(args(out), tmp_path, timeout=900)
    _run(args(tmp_path / "ref"), tmp_path, timeout=900)
    got = [_rounded(json.loads(x)) for x in (run / "results.jsonl").read_text().splitlines()]
    ref = [_rounded(json.loads(x)) for x in (tmp_path / "ref" / "toy" / "results.jsonl").read_text().splitlines()]
    assert got == ref, f"kill seed {SEED}"
