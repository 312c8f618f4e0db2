"""`lrm run` installs the embedded defaults without deleting or overwriting what it did not write.

The install target ($LRM_DEFAULT_POLICY / $LRM_DEFAULT_PRM, else $LRM_CACHE/default/{policy,prm})
gets a folder the engine wrote (new name, marker, rename); a cached run leaves the installed copy
untouched; a target holding a user's files is refused with one line before any stage runs; a
rerun stage's old outputs are set aside, not deleted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lrm_engine.errors import UserError
from lrm_engine.pipeline import INSTALL_MARKER, Pipeline, PipelineConfig

REPO = Path(__file__).resolve().parents[1]


def _fake_stage(p: Pipeline, stage: str, weights: bytes) -> Path:
    """A finished stage folder with a tiny model folder, as the pipeline leaves it."""
    d = p.stage_dir(stage)
    model = d / "model"
    model.mkdir(parents=True, exist_ok=True)
    (model / "config.json").write_text('{"model_type": "llama"}')
    (model / "model.safetensors").write_bytes(weights)
    (d / "done.json").write_text(json.dumps({"model_dir": str(model), "w": weights.hex()}))
    p.outputs[stage] = {"model_dir": str(model)}
    return model


def _pipeline(tmp_path: Path) -> Pipeline:
    p = Pipeline(PipelineConfig(run_name="t"), task=None, task_cfg={"name": "x"},
                 out_root=tmp_path / "out", log=lambda m: None)
    for stage in ("sft", "warmup", "annotate", "prm"):
        p.stage_dir(stage)  # the hashes, in order
    return p


@pytest.fixture
def targets(tmp_path, monkeypatch):
    pol, prm = tmp_path / "mine" / "policy", tmp_path / "mine" / "prm"
    monkeypatch.setenv("LRM_DEFAULT_POLICY", str(pol))
    monkeypatch.setenv("LRM_DEFAULT_PRM", str(prm))
    return pol, prm


def test_install_writes_a_marked_copy_and_a_cached_run_does_not_rewrite_it(tmp_path, targets):
    pol, prm = targets
    p = _pipeline(tmp_path)
    _fake_stage(p, "sft", b"policy-1")
    _fake_stage(p, "prm", b"prm-1")
    p._install_defaults()
    assert (pol / "model.safetensors").read_bytes() == b"policy-1"
    marker = json.loads((pol / INSTALL_MARKER).read_text())
    assert marker["stage"] == p.stage_dir("sft").name
    assert sorted(marker["files"]) == ["config.json", "model.safetensors"]
    # no temporary folders left beside the target
    assert sorted(x.name for x in pol.parent.iterdir()) == ["policy", "prm"]

    before = {f: os.stat(pol / f).st_mtime_ns for f in ("config.json", "model.safetensors", INSTALL_MARKER)}
    ino = os.stat(pol).st_ino
    p._install_defaults()  # cached: the installed copy already is this stage output
    assert os.stat(pol).st_ino == ino
    assert {f: os.stat(pol / f).st_mtime_ns for f in before} == before

    _fake_stage(p, "sft", b"policy-2")  # the stage was rerun: a new output replaces the engine's copy
    p._install_defaults()
    assert (pol / "model.safetensors").read_bytes() == b"policy-2"


def test_a_user_file_in_the_target_survives_and_is_refused_in_one_line(tmp_path, targets):
    pol, _ = targets
    pol.mkdir(parents=True)
    (pol / "notes.txt").write_text("my notes")
    p = _pipeline(tmp_path)
    _fake_stage(p, "sft", b"policy-1")
    _fake_stage(p, "prm", b"prm-1")
    with pytest.raises(UserError) as e:
        p._install_defaults()
    msg = str(e.value)
    assert len(msg.splitlines()) == 1
    assert f"LRM_DEFAULT_POLICY={pol}: holds files lrm did not create (notes.txt)" in msg
    assert (pol / "notes.txt").read_text() == "my notes" and sorted(os.listdir(pol)) == ["notes.txt"]


def test_a_user_file_added_to_an_installed_copy_is_refused_too(tmp_path, targets):
    pol, _ = targets
    p = _pipeline(tmp_path)
    _fake_stage(p, "sft", b"policy-1")
    _fake_stage(p, "prm", b"prm-1")
    p._install_defaults()
    (pol / "extra.bin").write_bytes(b"user data")
    _fake_stage(p, "sft", b"policy-2")
    with pytest.raises(UserError, match=r"holds files lrm did not create \(extra.bin\)"):
        p._install_defaults()
    assert (pol / "extra.bin").read_bytes() == b"user data"
    assert (pol / "model.safetensors").read_bytes() == b"policy-1"


def test_an_unmarked_exact_copy_of_this_output_is_adopted_not_rewritten(tmp_path, targets):
    """An install by an earlier engine (no marker) that is byte for byte this stage output."""
    pol, _ = targets
    p = _pipeline(tmp_path)
    src = _fake_stage(p, "sft", b"policy-1")
    _fake_stage(p, "prm", b"prm-1")
    pol.mkdir(parents=True)
    for f in src.iterdir():
        (pol / f.name).write_bytes(f.read_bytes())
    mtime = os.stat(pol / "model.safetensors").st_mtime_ns
    p._install_defaults()
    assert os.stat(pol / "model.safetensors").st_mtime_ns == mtime
    assert json.loads((pol / INSTALL_MARKER).read_text())["stage"] == p.stage_dir("sft").name


def test_a_rerun_stage_sets_its_old_outputs_aside(tmp_path):
    p = _pipeline(tmp_path)
    d = p.stage_dir("sweep")
    d.mkdir(parents=True)
    (d / "done.json").write_text("{}")
    (d / "beam@4.jsonl").write_text('{"id": "a"}\n')
    p.stage = "sweep"  # `lrm run stage=sweep`
    out = p._run_stage("sweep", lambda folder: {"rows": [], "fresh": not (folder / "beam@4.jsonl").exists()})
    assert out["fresh"]
    kept = d.with_name(d.name + ".prev-1")
    assert (kept / "beam@4.jsonl").read_text() == '{"id": "a"}\n'


def test_lrm_run_refuses_a_foreign_target_before_any_stage(tmp_path):
    target = tmp_path / "policy"
    target.mkdir()
    (target / "keep.me").write_text("x")
    env = dict(os.environ, OMP_NUM_THREADS="1", LRM_DEFAULT_POLICY=str(target),
               LRM_CACHE=str(tmp_path / "cache"))
    r = subprocess.run([sys.executable, "-m", "lrm_engine", "run", f"runtime.output_dir={tmp_path / 'out'}"],
                       capture_output=True, text=True, env=env, timeout=300, cwd=REPO)
    assert r.returncode == 2, r.stderr[-2000:]
    assert r.stderr.splitlines() == [
        f"lrm run: LRM_DEFAULT_POLICY={target}: holds files lrm did not create (keep.me); `lrm run` "
        f"installs the default policy model there and never overwrites or deletes them: point "
        f"LRM_DEFAULT_POLICY at a new or empty folder, or set pipeline.install_defaults=false"]
    assert "Traceback" not in r.stdout + r.stderr
    assert (target / "keep.me").read_text() == "x"
    assert not list((tmp_path / "out").rglob("done.json"))  # no stage ran
