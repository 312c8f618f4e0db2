"""executor=ray (issue 17): search and annotation sharded over real Ray actors give the records of
executor=local; a worker killed mid-run loses and duplicates nothing; a cluster started with
`ray start --head` is joined by address; runtime knobs stay out of the results fingerprint.

Ray runs for real here (a 2-CPU local cluster shared by the tests of this module, shut down at
the end; the head-node test starts and stops its own). Kept small: tiny random models, a few
arith problems.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

os.environ.setdefault("RAY_DEDUP_LOGS", "0")  # read when ray is imported
if os.environ.get("CI"):  # CI installs the `test` extra, ray included: these never skip there
    import ray
else:
    ray = pytest.importorskip("ray", reason="pip install -e '.[test]' installs ray")

from lrm_engine.errors import UserError  # noqa: E402
from lrm_engine.models import save_tiny_llama  # noqa: E402


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("exec")
    pol = save_tiny_llama(root / "policy", hidden_size=32, initializer_range=0.2)
    prm = save_tiny_llama(root / "prm", seed=1, hidden_size=32, initializer_range=0.2)
    return pol, prm


@pytest.fixture(scope="module", autouse=True)
def _ray_down_at_the_end():
    yield
    ray.shutdown()


@pytest.fixture
def cluster():
    """One local Ray (2 CPUs, no dashboard) for the module's tests; started on first use."""
    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False)  # never a recorded cluster
    yield


def _search_args(models, out, *extra):
    pol, prm = models
    return ["task=arith", "task.num_test=20", "task.num_train=20", "policy=hf", f"policy.path={pol}",
            "policy.max_step_tokens=6", "reward=prm_token", f"reward.path={prm}",
            "search=best_of_n", "search.n=3", "search_run.limit=5", "search_run.max_steps=3",
            "search_run.batch_size=2", f"runtime.output_dir={out}", "runtime.progress=false",
            "kernels=reference", *extra]


def _search(models, out, *extra):
    from lrm_engine import build, compose
    from lrm_engine.verbs import search as verb

    cfg = compose(_search_args(models, out, *extra))
    return verb.main(cfg, build(cfg)), _records(out / "results.jsonl")


def _records(path: Path) -> dict:
    """The file's records by id (none when it was never written); every id must be there once."""
    lines = path.read_text().splitlines() if path.exists() else []
    recs = [json.loads(x) for x in lines]
    ids = [r["id"] for r in recs]
    assert len(ids) == len(set(ids)), f"duplicated ids in {path}"
    return {r["id"]: r for r in recs}


def _same(rec):
    """A record without the KV peaks (a worker's KV store history is its own) and with floats
    rounded to 5 decimals (thread counts may round float32 sums differently)."""
    def walk(x):
        if isinstance(x, float):
            return round(x, 5)
        if isinstance(x, dict):
            return {k: walk(v) for k, v in x.items() if "peak" not in k}
        if isinstance(x, list):
            return [walk(v) for v in x]
        return x
    return walk(rec)


def _assert_same_records(a: dict, b: dict):
    assert a.keys() == b.keys()
    for pid in a:
        assert _same(a[pid]) == _same(b[pid]), pid


@pytest.fixture(scope="module")
def local_search(models, tmp_path_factory):
    """The executor=local run every Ray run is compared with."""
    import torch

    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("local")
    summary, recs = _search(models, out)
    assert summary["executor"]["name"] == "local" and len(recs) == 5
    assert len({r["solution"] for r in recs.values()}) > 1  # sampled, not constant
    return recs


# --------------------------------------------------------------------------- search


def test_search_on_ray_gives_the_local_records_and_resumes(models, local_search, cluster, tmp_path):
    summary, recs = _search(models, tmp_path, "executor=ray", "executor.num_workers=2")
    ex = summary["executor"]
    assert ex["name"] == "ray" and ex["workers"] == 2 and ex["restarts"] == 0
    assert ex["batches"] == 3 and ex["problems"] == 5  # 5 problems in batches of 2
    _assert_same_records(local_search, recs)
    # Grading happened on the driver, against the references.
    assert all("correct" in r and "reference" in r for r in recs.values())
    # The same folder again: everything resumed, nothing appended, nothing started.
    before = (tmp_path / "results.jsonl").read_bytes()
    summary, _ = _search(models, tmp_path, "executor=ray", "executor.num_workers=2")
    assert summary["resumed"] == 5 and summary["executor"]["batches"] == 0
    assert (tmp_path / "results.jsonl").read_bytes() == before


def test_local_then_ray_resume_one_file(models, local_search, cluster, tmp_path):
    """Executor knobs are not in the fingerprint: a local run's folder is resumed on Ray."""
    _search(models, tmp_path, "search_run.limit=2")
    summary, recs = _search(models, tmp_path, "executor=ray", "executor.num_workers=2",
                            "search_run.batch_size=1")
    assert summary["resumed"] == 2 and summary["executor"]["problems"] == 3
    _assert_same_records(local_search, recs)


def test_a_worker_killed_mid_run_loses_and_duplicates_nothing(models, local_search, cluster, tmp_path,
                                                              monkeypatch, capsys):
    # The first worker exits (os._exit) after its 2nd problem, with that batch not yet returned.
    monkeypatch.setenv("LRM_EXECUTOR_TEST_EXIT_AFTER", "2")
    summary, recs = _search(models, tmp_path, "executor=ray", "executor.num_workers=2",
                            "search_run.batch_size=1")
    ex = summary["executor"]
    assert ex["restarts"] == 1 and ex["retried_batches"] == 1 and ex["workers"] == 3
    assert ex["batches"] == 5 and ex["problems"] == 5  # the lost batch counted once, when it finished
    assert "worker 0 died" in capsys.readouterr().err
    _assert_same_records(local_search, recs)  # _records also checks each id is there once


# --------------------------------------------------------------------------- annotate


def _annotate(models, out, *extra):
    from lrm_engine import build, compose
    from lrm_engine.verbs import annotate as verb

    pol, _ = models
    cfg = compose(["task=arith", "task.num_train=30", "policy=hf", f"policy.path={pol}",
                   "policy.max_step_tokens=5", "search_run.split=train", "search_run.limit=4",
                   "search_run.max_steps=3", "search_run.batch_size=2", f"runtime.output_dir={out}",
                   "runtime.progress=false", "kernels=reference", *extra])
    return verb.main(cfg, build(cfg))


@pytest.mark.parametrize("annotator,file", [
    (["annotate=mc_rollout", "annotate.num_rollouts=2"], "prm.jsonl"),  # ResultsFile.append
    # The grouped writer: records + ledger (commit).
    (["annotate=omegaprm", "annotate.num_rollouts=2", "annotate.max_searches=1"], "prm.jsonl"),
])
def test_annotate_on_ray_writes_the_local_records(models, cluster, tmp_path, annotator, file):
    import torch

    torch.set_num_threads(1)
    local = _annotate(models, tmp_path / "local", *annotator)
    remote = _annotate(models, tmp_path / "ray", *annotator, "executor=ray", "executor.num_workers=2")
    assert remote["executor"]["name"] == "ray" and remote["executor"]["problems"] == 4
    a, b = _records(tmp_path / "local" / file), _records(tmp_path / "ray" / file)
    _assert_same_records(a, b)  # (a random tiny model finds no omegaprm label: both empty)
    assert remote["records"] == local["records"] and remote["validation"] == local["validation"]
    # The workers' counts and token counters reach the driver's summary.
    assert remote.get("counts") == local.get("counts")
    assert remote["policy_tokens"]["policy_tokens_computed"] == local["policy_tokens"]["policy_tokens_computed"] > 0
    assert len(a) >= (4 if "annotate=mc_rollout" in annotator else 0)
    if "annotate=omegaprm" in annotator:  # the ledger lists each problem once, as in-process
        ledger = lambda d: sorted((tmp_path / d / f"{file}.done").read_text().splitlines())  # noqa: E731
        assert ledger("ray") == ledger("local") and len(ledger("ray")) == 4


# --------------------------------------------------------------------------- the executor API


class _Failing:
    """A work whose 3rd problem raises a user error (the work's own failure: not retried)."""

    def setup(self):
        pass

    def run(self, batch):
        from lrm_engine.executor import BatchResult

        if 3 in batch:
            raise UserError("problem 3: bad input")
        return BatchResult(items=list(batch), problems=len(batch))


class _Dying:
    """A work whose worker process always dies."""

    def setup(self):
        pass

    def run(self, batch):
        os._exit(1)


@pytest.fixture
def by_value():
    """Ship this module's work classes to the workers by value (tests/ is not on their path)."""
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield
    ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


def test_an_error_of_the_work_stops_the_run_as_in_process(cluster, by_value):
    from lrm_engine.executor.ray_executor import RayExecutor

    got = []
    with pytest.raises(UserError, match="problem 3: bad input"):
        RayExecutor(num_workers=1).run(_Failing(), [1, 2, 3, 4], lambda r: got.extend(r.items),
                                       batch_size=1, progress=False)
    assert got == [1, 2]  # what finished before it is kept; nothing was retried


def test_workers_that_keep_dying_stop_after_max_restarts(cluster, by_value):
    from lrm_engine.executor.ray_executor import RayExecutor

    with pytest.raises(UserError) as e:
        RayExecutor(num_workers=1, max_restarts=1).run(_Dying(), [1, 2], lambda r: None,
                                                       batch_size=1, progress=False)
    msg = str(e.value)
    assert "\n" not in msg and "2 workers died" in msg and "executor.max_restarts" in msg


# --------------------------------------------------------------------------- config and CLI


def test_executor_knobs_are_not_in_the_fingerprint(models, tmp_path):
    from lrm_engine import compose
    from lrm_engine.fingerprint import fingerprint

    base = fingerprint(compose(_search_args(models, tmp_path)), "search")
    for extra in (["executor=ray"], ["executor=ray", "executor.num_workers=7", "executor.num_cpus=2",
                                     "executor.address=auto", "executor.max_restarts=0"]):
        assert fingerprint(compose(_search_args(models, tmp_path, *extra)), "search") == base
    assert fingerprint(compose(_search_args(models, tmp_path, "search.n=4")), "search") != base


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_address_is_one_line(models, tmp_path):
    from conftest import run_lrm

    port = _free_port()  # nothing listens there
    r = run_lrm("search", *_search_args(models, tmp_path, "executor=ray",
                                        f"executor.address=127.0.0.1:{port}"), timeout=300)
    assert r.returncode == 2, r.stderr[-2000:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"lrm search: executor.address=127.0.0.1:{port}: ")
    assert "ray start --head" in lines[0]


def test_search_joins_a_head_node_by_address(models, local_search, tmp_path):
    """`ray start --head` on 127.0.0.1, then `lrm search executor=ray executor.address=...`."""
    from conftest import run_lrm

    ray.shutdown()  # this process's local cluster is not needed (nor wanted: 2 cores)
    port = _free_port()
    ray_cli = str(Path(sys.executable).with_name("ray"))
    head = subprocess.Popen(
        [ray_cli, "start", "--head", "--block", f"--port={port}", "--node-ip-address=127.0.0.1",
         "--num-cpus=2", "--include-dashboard=false", "--disable-usage-stats"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "RAY_DEDUP_LOGS": "0"})
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert head.poll() is None, "ray start --head exited"
                time.sleep(1)
        out = tmp_path / "joined"
        r = run_lrm("search", *_search_args(models, out, "executor=ray", "executor.num_workers=2",
                                            f"executor.address=127.0.0.1:{port}"),
                    env={"OMP_NUM_THREADS": "1"}, timeout=400)
        assert r.returncode == 0, r.stderr[-3000:]
        summary = json.loads(r.stdout.strip().splitlines()[-1])
        assert summary["executor"]["name"] == "ray" and summary["executor"]["workers"] == 2
        _assert_same_records(local_search, _records(out / "results.jsonl"))
    finally:
        head.terminate()  # --block: stopping it stops the processes it started
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            head.kill()
            head.wait()
