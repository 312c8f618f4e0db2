"""Checkpoints: safetensors weights plus a sidecar with everything needed to resume exactly.

Layout of ``<run_dir>/checkpoints/step_<n>/`` (one Hugging Face model folder, loadable with
``from_pretrained`` as it is):

- ``config.json``, ``model.safetensors`` (``model.save_pretrained``), the tokenizer files when
  the run has a tokenizer;
- ``<name>.safetensors`` for each extra trainable module of the objective (a value head ...);
- ``optimizer.safetensors``: the optimizer's tensors (AdamW moments and step counts), keyed
  ``state/<param index>/<field>``;
- ``rng.safetensors``: torch CPU (and CUDA) RNG states;
- ``trainer_state.json``: step, optimizer param groups and non-tensor state, python/numpy RNG,
  the batch source's position, the objective's state, the last metrics, and
  ``"complete": true``.

No pickle anywhere. A checkpoint is written into ``checkpoints/.tmp-step_<n>-<pid>/`` and renamed
to ``step_<n>`` only when every file is written and fsynced, so a process killed mid-save leaves
either the previous checkpoints untouched or a ``.tmp-*`` folder that the next start deletes.
:func:`latest_checkpoint` only considers ``step_<n>`` folders whose ``trainer_state.json``
parses and says complete. The last ``keep_last`` checkpoints are kept.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors.torch import load_file, save_file

STATE_FILE = "trainer_state.json"
OPTIM_FILE = "optimizer.safetensors"
RNG_FILE = "rng.safetensors"
_STEP_RE = re.compile(r"^step_(\d+)$")


def _fsync_tree(path: Path) -> None:
    for p in sorted(path.rglob("*")):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
    _fsync_dir(path)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- optimizer / RNG


def optimizer_state_to_flat(opt_state: Mapping) -> tuple[dict[str, torch.Tensor], dict]:
    """Split ``optimizer.state_dict()`` into tensors (for safetensors) and JSON-able rest."""
    tensors, scalars = {}, {}
    for idx, st in opt_state["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"state/{idx}/{k}"] = v.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(idx), {})[k] = v
    groups = json.loads(json.dumps(opt_state["param_groups"], default=list))
    return tensors, {"param_groups": groups, "scalars": scalars}


def optimizer_state_from_flat(tensors: Mapping[str, torch.Tensor], meta: Mapping) -> dict:
    state: dict[int, dict[str, Any]] = {}
    for key, v in tensors.items():
        _, idx, k = key.split("/", 2)
        state.setdefault(int(idx), {})[k] = v
    for idx, st in meta.get("scalars", {}).items():
        state.setdefault(int(idx), {}).update(st)
    groups = []
    for g in meta["param_groups"]:
        g = dict(g)
        if isinstance(g.get("betas"), list):
            g["betas"] = tuple(g["betas"])
        groups.append(g)
    return {"state": state, "param_groups": groups}


def capture_rng() -> tuple[dict[str, torch.Tensor], dict]:
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"torch_cuda_{i}"] = s
    v, st, g = random.getstate()
    meta: dict[str, Any] = {"python": [v, list(st), g]}
    try:
        import numpy as np

        name, keys, pos, has_gauss, cached = np.random.get_state()
        meta["numpy"] = [name, keys.tolist(), int(pos), int(has_gauss), float(cached)]
    except ImportError:  # pragma: no cover
        pass
    return tensors, meta


def restore_rng(tensors: Mapping[str, torch.Tensor], meta: Mapping) -> None:
    torch.set_rng_state(tensors["torch_cpu"])
    cuda = sorted(k for k in tensors if k.startswith("torch_cuda_"))
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([tensors[k] for k in cuda])
    if "python" in meta:
        v, st, g = meta["python"]
        random.setstate((v, tuple(st), g))
    if "numpy" in meta:
        import numpy as np

        name, keys, pos, has_gauss, cached = meta["numpy"]
        np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))


# --------------------------------------------------------------------------- weights


def load_weights_into(model: torch.nn.Module, folder: Path, prefix: str = "model") -> None:
    """Load ``<prefix>.safetensors`` (or its sharded index) from ``folder`` into ``model``.

    Keys absent from the file are accepted only when they are tied to a loaded tensor (tied
    input/output embeddings are saved once).
    """
    folder = Path(folder)
    single = folder / f"{prefix}.safetensors"
    index = folder / f"{prefix}.safetensors.index.json"
    if single.is_file():
        sd = load_file(str(single))
    elif index.is_file():
        sd = {}
        for shard in sorted(set(json.loads(index.read_text())["weight_map"].values())):
            sd.update(load_file(str(folder / shard)))
    else:
        raise FileNotFoundError(f"no {single.name} in {folder}")
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if unexpected:
        raise RuntimeError(f"{folder}: unexpected keys in checkpoint: {unexpected[:8]}")
    if missing:
        own = model.state_dict(keep_vars=True)
        loaded_ptrs = {own[k].data_ptr() for k in sd if k in own}
        really = [k for k in missing if own[k].data_ptr() not in loaded_ptrs]
        if really:
            raise RuntimeError(f"{folder}: keys missing from checkpoint: {really[:8]}")


# --------------------------------------------------------------------------- save / find / load


def save_model_quietly(model, folder: Path, state_dict: Mapping[str, torch.Tensor] | None = None) -> None:
    """``model.save_pretrained(folder)`` (safetensors) without transformers' shard progress bar;
    ``state_dict``: the weights to write instead of the model's own (an FSDP model's gathered
    full state)."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        kw = {} if state_dict is None else {"state_dict": dict(state_dict)}
        model.save_pretrained(str(folder), safe_serialization=True, **kw)
    finally:
        if was:
            hf_logging.enable_progress_bar()


def checkpoint_dirs(root: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints under ``root``, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    out = []
    for p in root.iterdir():
        m = _STEP_RE.match(p.name)
        if not m or not p.is_dir():
            continue
        try:
            st = json.loads((p / STATE_FILE).read_text())
        except (OSError, ValueError):
            continue
        if st.get("complete") and int(st.get("step", -1)) == int(m.group(1)):
            out.append((int(m.group(1)), p))
    return sorted(out)


def latest_checkpoint(root: Path) -> Path | None:
    ck = checkpoint_dirs(root)
    return ck[-1][1] if ck else None


def clean_partial(root: Path) -> list[Path]:
    """Delete leftovers of interrupted saves (``.tmp-*`` and incomplete ``step_*`` folders)."""
    root = Path(root)
    if not root.is_dir():
        return []
    complete = {p for _, p in checkpoint_dirs(root)}
    removed = []
    for p in root.iterdir():
        if p.is_dir() and (p.name.startswith(".tmp-") or (_STEP_RE.match(p.name) and p not in complete)):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


def save_checkpoint(root: Path, step: int, *, model, optimizer, state: dict,
                    extra_modules: Mapping[str, torch.nn.Module] | None = None,
                    tokenizer=None, keep_last: int = 2,
                    model_state_dict: Mapping[str, torch.Tensor] | None = None,
                    optimizer_state: Mapping | None = None) -> Path:
    """Write ``root/step_<step>`` atomically (see the module docstring); prune to ``keep_last``.

    ``model_state_dict`` / ``optimizer_state``: full (unsharded) weights and optimizer state
    (index-keyed, as ``optimizer.state_dict()``) to write instead of the live ones — an FSDP
    run gathers them, so every checkpoint has one layout whatever the world size or strategy.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step}"
    tmp = root / f".tmp-step_{step}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    save_model_quietly(model, tmp, model_state_dict)
    if tokenizer is not None:
        tokenizer.save_pretrained(str(tmp))
    for name, mod in (extra_modules or {}).items():
        save_file({k: v.detach().cpu().contiguous() for k, v in mod.state_dict().items()},
                  str(tmp / f"{name}.safetensors"))
    opt_t, opt_meta = optimizer_state_to_flat(optimizer.state_dict() if optimizer_state is None
                                              else optimizer_state)
    save_file(opt_t, str(tmp / OPTIM_FILE))
    rng_t, rng_meta = capture_rng()
    save_file(rng_t, str(tmp / RNG_FILE))
    full = dict(state)
    full.update({"step": step, "optimizer": opt_meta, "rng": rng_meta, "complete": True})
    (tmp / STATE_FILE).write_text(json.dumps(full, indent=1))
    _fsync_tree(tmp)
    if final.exists():  # only when re-saving a step (e.g. resumed exactly at it)
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(root)
    if keep_last > 0:
        for _, p in checkpoint_dirs(root)[:-keep_last]:
            shutil.rmtree(p, ignore_errors=True)
    return final


def load_checkpoint(path: Path, *, model, optimizer=None,
                    extra_modules: Mapping[str, torch.nn.Module] | None = None,
                    restore_rng_state: bool = True) -> dict:
    """Load weights, optimizer and RNG from a checkpoint in place; return its trainer state."""
    path = Path(path)
    state = json.loads((path / STATE_FILE).read_text())
    load_weights_into(model, path)
    for name, mod in (extra_modules or {}).items():
        mod.load_state_dict(load_file(str(path / f"{name}.safetensors")))
    if optimizer is not None:
        optimizer.load_state_dict(load_optimizer_state(path, state))
    if restore_rng_state:
        restore_rng(load_file(str(path / RNG_FILE)), state["rng"])
    return state


def load_optimizer_state(path: Path, state: Mapping) -> dict:
    """The checkpoint's optimizer state, as ``optimizer.state_dict()`` gives it (index-keyed)."""
    return optimizer_state_from_flat(load_file(str(Path(path) / OPTIM_FILE)), state["optimizer"])
