"""Kill-and-resume: an annotation run SIGKILLed at random moments and restarted with the same
command ends with every record exactly once (and the same records as an uninterrupted run)."""

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

HERE = Path(__file__).resolve().parent
N_PROBLEMS = 24


def _lines(path: Path) -> int:
    try:
        return path.read_text().count("\n")
    except FileNotFoundError:
        return 0


def _start(name: str, out: Path, delay: float) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{HERE}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.Popen([sys.executable, str(HERE / "scripted_annotate.py"), name, str(out),
                             str(N_PROBLEMS), str(delay)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


@pytest.mark.parametrize("name,kills", [("pairs", 3), ("omegaprm", 2)])
def test_sigkill_at_random_points_then_resume_gives_every_record_once(tmp_path, name, kills):
    from scripted_annotate import build, examples, grade, make_ctx

    seed = int(os.environ.get("LRM_KILL_SEED", time.time_ns() % 2**31))
    rng = random.Random(seed)
    out = tmp_path / "out"
    ann = build(name)
    ledger = out / (ann.output_file + ".done")
    killed_at = []
    for _ in range(kills):
        before = _lines(ledger)
        proc = _start(name, out, delay=0.01)
        deadline = time.monotonic() + 30
        # wait for some progress, then kill at a random moment of the writing that follows
        while _lines(ledger) <= before and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 0.4))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        killed_at.append(_lines(ledger))
    assert killed_at[-1] < N_PROBLEMS, f"the kills came after the run ended: {killed_at}"
    proc = _start(name, out, delay=0.0)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, f"seed={seed} killed_at={killed_at}\n{stderr[-2000:]}"

    data = [json.loads(x) for x in (out / ann.output_file).read_text().splitlines()]
    done = [json.loads(x) for x in ledger.read_text().splitlines()]
    msg = f"seed={seed} killed_at={killed_at}"
    assert sorted(d["id"] for d in done) == sorted(f"e{i}" for i in range(N_PROBLEMS)), msg
    ids = [r["id"] for r in data]
    assert len(ids) == len(set(ids)), msg
    per = {d["id"]: d["records"] for d in done}
    for pid, n in per.items():
        assert sum(r["problem_id"] == pid for r in data) == n, msg
    # the same records as one uninterrupted run (the scripted world is deterministic)
    ref = build(name)
    ref_out = ref.open_output(tmp_path / "ref")
    ref.annotate(make_ctx(), examples(N_PROBLEMS), grade, ref_out, batch_size=2, progress=False)
    key = lambda r: r["id"]  # noqa: E731
    assert sorted(data, key=key) == sorted(ref_out.records(), key=key), msg
