"""Data-parallel training under torchrun: the process group, who writes, and gradient sync.

    torchrun --nproc_per_node=N -m lrm_engine train objective=sft task=arith ...

Launched by torchrun (``WORLD_SIZE`` > 1 in the environment) the training loop joins the
process group torchrun set up (:func:`init_from_env`: backend ``gloo`` on CPU, ``nccl`` on
CUDA, ``timeout`` from ``TrainConfig.dist_timeout_s``); without torchrun nothing here does
anything and the loop runs as one process.

Contract of a data-parallel run (see :mod:`lrm_engine.train.trainer`):

- the global micro-batch ``j`` is the one a single process would draw at
  ``micro_batch_size x world_size``; rank ``r`` takes its ``r``-th slice of
  ``micro_batch_size`` units (batch sources' ``shard(rank, world)``);
- a step's loss is the weighted mean over the *global* step: every rank back-propagates
  ``w_i / W * loss_i`` with ``W`` the all-reduced sum of the micro-batch weights of all ranks
  (tokens for token-level losses), and gradients are summed across ranks
  (:func:`all_reduce_grads`, ``strategy=ddp``) or reduce-scattered by FSDP2
  (``strategy=fsdp``), so N ranks at batch B equal one process at batch N x B;
- rank 0 alone writes files (checkpoints, logs, TensorBoard, the model, the summary);
  :func:`is_main` guards every write, and other ranks print nothing on stdout
  (:func:`quiet_stdout_unless_main`);
- a rank that dies: torchrun stops the others (SIGTERM), a rank blocked in a collective gets an
  error from the backend (or the group's timeout), and each survivor prints one line
  (:func:`stop_message`); rerunning the same command resumes from the last checkpoint.

Data-parallel gradient sync is done here instead of by wrapping the model in
``DistributedDataParallel``: the objectives call the model in ways DDP's forward hook does
not see (the PRM objective runs ``model.get_decoder()`` and the output head directly, PPO trains
an extra value head), and DDP syncs only what goes through its wrapper's ``forward``. One
all-reduce of one flat buffer per optimizer step (after all micro-batches: DDP's ``no_sync``
accumulation) is what DDP would do, for every objective.
"""

from __future__ import annotations

import os
import signal
import sys
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, Sequence

import torch

# Values of ``TrainConfig.strategy``.
STRATEGIES = ("ddp", "fsdp")


def env_world_size() -> int:
    """``WORLD_SIZE`` set by torchrun (1 without it)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0") or 0)


def active() -> bool:
    """True in a process group of more than one rank."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if active() else 0


def world_size() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """Rank 0 (or the only process): the one that writes files."""
    return rank() == 0


# Last checkpoint and step, for the one-line message of a rank that is stopped.
_progress: dict[str, Any] = {"step": 0, "checkpoint": None}


def note_progress(step: int, checkpoint: str | None) -> None:
    _progress["step"], _progress["checkpoint"] = step, checkpoint


def stop_message(reason: str) -> str:
    """``lrm train: rank r of N stopped at step s (reason); ...`` — one line."""
    _progress["reported"] = True
    ck = _progress["checkpoint"]
    where = (f"the same command resumes from {ck}" if ck else
             "no checkpoint yet: the same command starts again")
    return (f"lrm train: rank {rank()} of {world_size()} stopped at step {_progress['step']} "
            f"({reason}); {where}")


def _on_sigterm(signum, frame):  # torchrun stops the surviving workers with SIGTERM
    if not _progress.get("reported"):  # one line per rank, also when already reported
        print(stop_message("stopped by torchrun: another rank failed"), file=sys.stderr, flush=True)
    os._exit(128 + signum)


def init_from_env(device_type: str = "cpu", timeout_s: float = 600.0) -> bool:
    """Join torchrun's process group when ``WORLD_SIZE`` > 1 (idempotent); True when joined.

    Backend ``nccl`` for CUDA (each rank on ``cuda:LOCAL_RANK``), ``gloo`` otherwise. A
    collective that waits longer than ``timeout_s`` (a peer that died without closing its
    connection) raises instead of hanging.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size() > 1
    if env_world_size() <= 1:
        return False
    backend = "nccl" if device_type == "cuda" else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank())
    dist.init_process_group(backend, timeout=timedelta(seconds=float(timeout_s)))
    signal.signal(signal.SIGTERM, _on_sigterm)
    return True


def shutdown() -> None:
    """Leave the process group (after a last barrier, so rank 0's writes are done)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        if dist.get_world_size() > 1:
            dist.barrier()
        dist.destroy_process_group()


def device_for(device: torch.device) -> torch.device:
    """This rank's device: ``cuda`` without an index becomes ``cuda:LOCAL_RANK``."""
    if active() and device.type == "cuda" and device.index is None:
        return torch.device("cuda", local_rank())
    return device


def barrier() -> None:
    import torch.distributed as dist

    if active():
        dist.barrier()


@contextmanager
def main_first():
    """Rank 0 runs the block first (it may write files: a tokenizer, oracle data); the other
    ranks run it after, and find what rank 0 wrote."""
    if not active():
        yield
        return
    if not is_main():
        barrier()
    try:
        yield
    finally:
        if is_main():
            barrier()


def quiet_stdout_unless_main() -> None:
    """Point file descriptor 1 of ranks other than 0 at /dev/null: one summary line per run."""
    if active() and not is_main():
        sys.stdout.flush()
        fd = os.open(os.devnull, os.O_WRONLY)
        os.dup2(fd, 1)
        os.close(fd)


def _comm_device(t: torch.Tensor) -> torch.Tensor:
    import torch.distributed as dist

    if dist.get_backend() == "nccl":
        return t.cuda()
    return t.cpu()


def all_reduce_sum(values: Sequence[float]) -> list[float]:
    """Element-wise sum over ranks of a list of floats (float64)."""
    import torch.distributed as dist

    if not active():
        return [float(v) for v in values]
    t = _comm_device(torch.tensor([float(v) for v in values], dtype=torch.float64))
    dist.all_reduce(t)
    return t.cpu().tolist()


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order (picklable objects)."""
    import torch.distributed as dist

    if not active():
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def all_reduce_grads(params: Sequence[torch.nn.Parameter]) -> None:
    """Sum the gradients of ``params`` over ranks, in place, in one flat buffer per dtype.

    A parameter without a gradient on this rank counts as a zero gradient (every rank sends a
    buffer of the same layout)."""
    import torch.distributed as dist

    if not active():
        return
    by_dtype: dict[torch.dtype, list[torch.nn.Parameter]] = {}
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        by_dtype.setdefault(p.grad.dtype, []).append(p)
    for ps in by_dtype.values():
        flat = torch.cat([p.grad.reshape(-1) for p in ps])
        dist.all_reduce(flat)
        off = 0
        for p in ps:
            n = p.grad.numel()
            p.grad.copy_(flat[off:off + n].view_as(p.grad))
            off += n


def broadcast_params(modules: Sequence[torch.nn.Module]) -> None:
    """Rank 0's parameters and buffers on every rank (what DDP does at construction)."""
    import torch.distributed as dist

    if not active():
        return
    with torch.no_grad():
        for m in modules:
            for t in list(m.parameters()) + list(m.buffers()):
                dist.broadcast(t.data, src=0)


def is_comm_error(e: BaseException) -> bool:
    """An error raised because a peer rank is gone (closed connection, timeout)."""
    import torch.distributed as dist

    kinds = tuple(k for k in (getattr(dist, "DistError", None),) if k is not None)
    if kinds and isinstance(e, kinds):
        return True
    text = str(e).lower()
    return isinstance(e, RuntimeError) and any(s in text for s in (
        "connection closed", "connection reset", "gloo", "nccl", "timed out", "broken pipe"))


class PeerLost(RuntimeError):
    """Another rank of the group is gone (its message is the one line to print)."""


# --------------------------------------------------------------------------- FSDP2


def fully_shard_model(model: torch.nn.Module, device: torch.device) -> None:
    """FSDP2 ``fully_shard`` over all ranks: each decoder layer (``model.model.layers``, the
    Hugging Face decoder layout) is one unit, the rest (embeddings, final norm, head) the root."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (world_size(),))
    layers = getattr(getattr(model, "model", None), "layers", None)
    for layer in layers or ():
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)


def _full_options():
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True)


def full_model_state(model) -> dict:
    """Gathered full weights of an FSDP model (a collective; rank 0 gets them). A tensor tied to
    an earlier one (the output head tied to the embeddings) is left out, as ``save_pretrained``
    leaves it out of an unsharded model."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    msd = get_model_state_dict(model, options=_full_options())
    first: dict[int, str] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        if first.setdefault(id(p), name) != name:
            msd.pop(name, None)
    return msd


def full_state_dicts(model, optimizer) -> tuple[dict, dict]:
    """Gathered full model weights and optimizer state (index-keyed, as
    ``optimizer.state_dict()`` of an unsharded run); a collective: every rank calls it, rank 0
    gets the tensors, the others empty dicts."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    msd = full_model_state(model)
    osd = get_optimizer_state_dict(model, optimizer, options=_full_options())
    order = [fqn for g in osd.get("param_groups", []) for fqn in g["params"]]
    index = {fqn: i for i, fqn in enumerate(order)}
    state = {index[fqn]: st for fqn, st in osd.get("state", {}).items()}
    groups, i = [], 0
    for g in osd.get("param_groups", []):
        g = dict(g)
        g["params"] = list(range(i, i + len(g["params"])))
        i += len(g["params"])
        groups.append(g)
    return msd, {"state": state, "param_groups": groups}


def load_full_optimizer_state(model, optimizer, opt_state: dict, names: Sequence[str]) -> None:
    """Load an index-keyed full optimizer state (any checkpoint) into an FSDP run's optimizer;
    ``names[i]`` is the parameter of index ``i``."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    state = {names[int(i)]: st for i, st in opt_state["state"].items()}
    groups = []
    for g in opt_state["param_groups"]:
        g = dict(g)
        g["params"] = [names[int(i)] for i in g["params"]]
        groups.append(g)
    set_optimizer_state_dict(model, optimizer, {"state": state, "param_groups": groups},
                             options=StateDictOptions(full_state_dict=True))
