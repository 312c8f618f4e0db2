"""The one training loop. It hosts every objective and knows none of them by name.

    Trainer(model, objective, source, TrainConfig(...), run_dir).train() -> TrainResult

- ``objective``: an :class:`~lrm_engine.objectives.base.Objective` — ``loss(model, batch) ->
  (loss, metrics)`` plus the optional hooks documented there (setup, extra trainable modules,
  micro-batch weights, token counts, state, per-step callback).
- ``source``: a batch source (:mod:`lrm_engine.train.data`): ``next_batch() -> (batch,
  example indices)`` with ``state_dict``/``load_state_dict`` — a fixed dataset for SFT/PRM/DPO, a
  rollout generator for on-policy RL.

Each optimizer step draws ``grad_accum`` micro-batches, computes every micro-batch loss under
the chosen precision (fp32, or bf16 autocast), back-propagates ``w_i / sum(w) * loss_i`` (``w_i``
from ``objective.loss_weight``, default 1), clips the global gradient norm, and steps AdamW
(no weight decay on 1-D parameters: norms and biases) with the learning rate of
:class:`~lrm_engine.train.schedule.CosineWithWarmup`.

Outputs under ``run_dir``:

- ``tb/``: TensorBoard scalars ``train/loss``, ``train/lr``, ``train/grad_norm``,
  ``train/tokens_per_s``, ``train/epoch`` and ``objective/<metric>`` for every objective metric;
- ``checkpoints/step_<n>/`` every ``save_every`` steps and at the end (see
  :mod:`lrm_engine.train.checkpoint`), the last ``keep_last`` kept;
- ``data_log.jsonl``: one line per optimizer step, ``{"step": n, "examples": [...]}``, the
  example indices the step consumed, in order. It is fsynced before each checkpoint and cut back
  to the checkpoint's step on resume, so after any number of interruptions it lists every step
  exactly once.

Data parallel (started by torchrun, ``WORLD_SIZE`` > 1; :mod:`lrm_engine.train.distributed`):
every rank draws its slice of each global micro-batch (the one a single process draws at
``micro_batch_size x world size``); the micro-batch weights are all-reduced so each rank
back-propagates ``w_i / W_global * loss_i``; gradients are summed over ranks (``strategy=ddp``)
or reduce-scattered by FSDP2 (``strategy=fsdp``); the step's loss, metrics, token count and
example list are reduced to the global step's. Rank 0 alone writes (checkpoints, data log,
TensorBoard, progress bar, callbacks); a data-log line also says which rank consumed which
examples (``ranks``). Checkpoints hold full weights and index-keyed optimizer state whatever the
strategy, and the batch source's global position, so they resume on any world size with the same
global micro-batch.

Resume (``resume=True``, the default): a start finds the newest complete checkpoint, restores
weights, optimizer, RNG, the batch source's position and the objective's state, and continues
at the next step; the run ends at ``total_steps`` whatever the number of interruptions, and an
interrupted-then-resumed run consumes exactly the batches of an uninterrupted one.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

from ..objectives.base import default_num_tokens
from . import checkpoint as ckpt
from . import distributed as dist_
from .distributed import STRATEGIES
from .schedule import CosineWithWarmup

log = logging.getLogger("lrm_engine.train")

DATA_LOG = "data_log.jsonl"


@dataclass
class TrainConfig:
    """Settings of the training loop (objective-independent)."""

    # Number of optimizer steps of the whole run (a resumed run stops at the same count).
    total_steps: int = 500
    # Units (sequences or packed rows) per micro-batch.
    micro_batch_size: int = 16
    # Micro-batches per optimizer step.
    grad_accum: int = 1
    # Peak learning rate (AdamW).
    lr: float = 1e-3
    # Learning-rate floor as a fraction of the peak (end of the cosine).
    min_lr_ratio: float = 0.1
    # Linear warmup steps.
    warmup_steps: int = 20
    # AdamW decoupled weight decay (not applied to 1-D parameters).
    weight_decay: float = 0.01
    # AdamW betas.
    beta1: float = 0.9
    beta2: float = 0.95
    # AdamW epsilon.
    eps: float = 1e-8
    # Clip the global gradient norm to this value; <= 0 disables clipping.
    max_grad_norm: float = 1.0
    # "fp32" or "bf16" (bf16 autocast for the forward/backward; master weights stay fp32).
    precision: str = "fp32"
    # Seed of the data order and of the torch/python RNGs at the start of a fresh run.
    seed: int = 0
    # Write a checkpoint every this many steps (0: only at the end).
    save_every: int = 100
    # Keep this many most recent checkpoints (0: keep all).
    keep_last: int = 2
    # Write TensorBoard scalars every this many steps.
    log_every: int = 1
    # "cpu", "cuda", "cuda:1", or "auto" (CUDA when available).
    device: str = "auto"
    # Show a tqdm progress bar.
    progress: bool = True
    # Resume from the newest complete checkpoint in run_dir (False: refuse a non-empty run).
    resume: bool = True
    # torch intra-op threads (None: leave torch's default).
    num_threads: int | None = None
    # Write TensorBoard event files.
    tensorboard: bool = True
    # Data-parallel strategy under torchrun (world size > 1; one process ignores it): "ddp"
    # (replicated weights, gradients all-reduced) or "fsdp" (FSDP2 fully_shard: parameters,
    # gradients and optimizer state sharded over the ranks).
    strategy: str = "ddp"
    # Seconds a collective may wait for the other ranks before it fails (a dead peer).
    dist_timeout_s: float = 600.0

    def __post_init__(self):
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be 'fp32' or 'bf16', got {self.precision!r}")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}")
        if self.dist_timeout_s <= 0:
            raise ValueError("dist_timeout_s must be positive")
        for k in ("total_steps", "micro_batch_size", "grad_accum", "log_every"):
            if getattr(self, k) <= 0:
                raise ValueError(f"{k} must be positive")


@dataclass
class TrainResult:
    """What a training run did (this process's part, plus where things are). Under torchrun
    losses, tokens and metrics are those of the global steps (the same on every rank)."""

    run_dir: str
    # Global step reached (== total_steps unless the run failed).
    steps: int
    # Step the run resumed from (0: fresh start).
    resumed_from: int
    # Loss of the first step this process ran and mean loss of its last 10 steps.
    first_loss: float | None
    final_loss: float | None
    # Per-step losses of the steps this process ran.
    losses: list[float] = field(default_factory=list)
    # Tokens processed and wall time of this process's steps; their ratio.
    tokens: int = 0
    wall_s: float = 0.0
    tokens_per_s: float = 0.0
    # The newest complete checkpoint folder.
    last_checkpoint: str | None = None
    # Final model folder (set by the high-level entry points such as train_sft).
    model_dir: str | None = None
    # Last logged metrics.
    metrics: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict:
        return asdict(self)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


def _param_groups(params: Sequence[tuple[str, torch.nn.Parameter]], weight_decay: float):
    """AdamW groups (decay: >= 2-D, no decay: 1-D) and the parameter names in optimizer order
    (index ``i`` of the optimizer state is ``names[i]``)."""
    decay, no_decay, seen = [], [], set()
    for n, p in params:
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (no_decay if p.ndim < 2 else decay).append((n, p))
    groups = [{"params": [p for _, p in decay], "weight_decay": weight_decay},
              {"params": [p for _, p in no_decay], "weight_decay": 0.0}]
    return groups, [n for n, _ in decay] + [n for n, _ in no_decay]


def _fault_injection(rank: int, step: int) -> None:
    """Test aid: ``LRM_TEST_EXIT_AFTER_STEP=<rank>:<step>`` makes that rank die (``os._exit``)
    right after that step, as a killed worker would."""
    spec = os.environ.get("LRM_TEST_EXIT_AFTER_STEP")
    if spec:
        r, k = (int(x) for x in spec.split(":"))
        if r == rank and k == step:
            os._exit(17)


def read_data_log(run_dir: str | Path) -> list[dict]:
    """The parsed lines of ``<run_dir>/data_log.jsonl`` (a torn last line is ignored)."""
    path = Path(run_dir) / DATA_LOG
    out = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out


def _truncate_data_log(run_dir: Path, upto_step: int) -> None:
    keep = [r for r in read_data_log(run_dir) if r.get("step", 0) <= upto_step]
    path = run_dir / DATA_LOG
    tmp = run_dir / (DATA_LOG + ".tmp")
    with open(tmp, "w") as f:
        for r in keep:
            f.write(json.dumps(r) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def join_group(cfg: TrainConfig) -> int:
    """Join torchrun's process group when launched by it (before a run writes anything);
    returns the world size (1 without torchrun)."""
    dist_.init_from_env(resolve_device(cfg.device).type, cfg.dist_timeout_s)
    return dist_.world_size()


class Trainer:
    """The loop (see the module docstring)."""

    def __init__(self, model: torch.nn.Module, objective, source, config: TrainConfig,
                 run_dir: str | Path, *, tokenizer=None,
                 callbacks: Sequence[Callable[[int, Mapping[str, float]], None]] = ()):
        self.model, self.objective, self.source, self.cfg = model, objective, source, config
        self.run_dir = Path(run_dir)
        self.tokenizer = tokenizer
        self.callbacks = list(callbacks)
        self.device = resolve_device(config.device)
        self.ckpt_root = self.run_dir / "checkpoints"
        self.step = 0
        # True once the model is sharded by FSDP2 (strategy=fsdp, world size > 1).
        self._fsdp = False

    # -- optional objective hooks, with defaults ---------------------------------------------
    def _hook(self, name: str, *args, default=None):
        fn = getattr(self.objective, name, None)
        return fn(*args) if callable(fn) else default

    def _extra_modules(self) -> dict[str, torch.nn.Module]:
        return dict(self._hook("trainable_modules", default={}) or {})

    def _num_tokens(self, batch) -> int:
        fn = getattr(self.objective, "num_tokens", None)
        return int(fn(batch)) if callable(fn) else default_num_tokens(batch)

    def save_model(self, folder: str | Path) -> None:
        """Rank 0 writes the trained model as a Hugging Face folder (safetensors). Under
        ``strategy=fsdp`` every rank must call it: the full weights are gathered first."""
        state = None
        if self._fsdp:
            state = dist_.full_model_state(self.model)
        if dist_.is_main():
            ckpt.save_model_quietly(self.model, Path(folder), state)

    # -- data parallel ------------------------------------------------------------------------
    def _shard_source(self, rank: int, world: int) -> None:
        """Give rank ``rank`` its slice of every global micro-batch (the source, or the source
        it wraps, has ``shard(rank, world)``)."""
        src = self.source
        while not callable(getattr(src, "shard", None)) and getattr(src, "source", None) is not None:
            src = src.source
        if not callable(getattr(src, "shard", None)):
            raise ValueError(f"the batch source {type(src).__name__} of objective "
                             f"{getattr(self.objective, 'name', '?')!r} cannot be split across "
                             f"ranks; run it as one process (without torchrun)")
        src.shard(rank, world)

    def _save(self, step: int, model, optimizer, extra, names, all_metrics, fsdp: bool):
        """Write checkpoint ``step`` (rank 0; under FSDP every rank joins the gather first)."""
        model_sd = opt_sd = None
        if fsdp:
            model_sd, opt_sd = dist_.full_state_dicts(model, optimizer)
        if not dist_.is_main():
            return None
        obj_state = self._hook("state_dict", default={}) or {}
        return ckpt.save_checkpoint(
            self.ckpt_root, step, model=model, optimizer=optimizer, extra_modules=extra,
            tokenizer=self.tokenizer, keep_last=self.cfg.keep_last,
            model_state_dict=model_sd, optimizer_state=opt_sd,
            state={"data": self.source.state_dict(), "objective": obj_state,
                   "metrics": all_metrics, "total_steps": self.cfg.total_steps,
                   "objective_name": getattr(self.objective, "name", None),
                   "world_size": dist_.world_size(), "strategy": self.cfg.strategy,
                   "param_names": names})

    # -- the loop ---------------------------------------------------------------------------
    def train(self) -> TrainResult:
        try:
            return self._train()
        except Exception as e:
            if dist_.active() and dist_.is_comm_error(e):
                detail = " ".join(str(e).split())[:160]
                raise dist_.PeerLost(dist_.stop_message(
                    f"lost contact with the other ranks: {detail}")) from e
            raise

    def _train(self) -> TrainResult:
        cfg = self.cfg
        if cfg.num_threads:
            torch.set_num_threads(cfg.num_threads)
        dist_.init_from_env(self.device.type, cfg.dist_timeout_s)
        world, rank = dist_.world_size(), dist_.rank()
        main = rank == 0
        fsdp = world > 1 and cfg.strategy == "fsdp"
        self.device = dist_.device_for(self.device)
        if world > 1:
            self._shard_source(rank, world)
        latest = ckpt.latest_checkpoint(self.ckpt_root) if cfg.resume else None
        if not cfg.resume and (ckpt.checkpoint_dirs(self.ckpt_root) or (self.run_dir / DATA_LOG).exists()):
            raise FileExistsError(f"{self.run_dir} holds an earlier run and resume=False; use a new run_dir")
        dist_.barrier()  # every rank has looked before rank 0 changes anything
        if main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            ckpt.clean_partial(self.ckpt_root)

        if latest is None:
            torch.manual_seed(cfg.seed)
            import random as _random

            _random.seed(cfg.seed)
        model = self.model.to(self.device)
        model.train()
        dist_.broadcast_params([model])  # rank 0's starting weights everywhere (as DDP does)
        self._hook("setup", model, self.device)
        extra = self._extra_modules()
        for m in extra.values():
            m.to(self.device).train()
        if fsdp and extra:
            raise ValueError(f"strategy=fsdp: objective {getattr(self.objective, 'name', '?')!r} "
                             f"trains extra modules ({', '.join(extra)}); use strategy=ddp")
        named = list(model.named_parameters()) + [
            (f"{n}.{k}", p) for n, m in extra.items() for k, p in m.named_parameters()]
        state = None
        if latest is not None:
            # weights (and RNG) now, into the whole model; the optimizer once it exists
            state = ckpt.load_checkpoint(latest, model=model, optimizer=None, extra_modules=extra)
        dist_.broadcast_params(list(extra.values()))
        if fsdp:
            dist_.fully_shard_model(model, self.device)
            self._fsdp = True
            named = list(model.named_parameters())
        groups, names = _param_groups(named, cfg.weight_decay)
        params = [p for g in groups for p in g["params"]]
        optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps)
        schedule = CosineWithWarmup(cfg.lr, cfg.total_steps, cfg.warmup_steps, cfg.min_lr_ratio)

        start = 0
        if latest is not None:
            opt_state = ckpt.load_optimizer_state(latest, state)
            if fsdp:
                dist_.load_full_optimizer_state(model, optimizer, opt_state, names)
            else:
                optimizer.load_state_dict(opt_state)
            start = int(state["step"])
            self.source.load_state_dict(state["data"])
            if state.get("objective"):
                self._hook("load_state_dict", state["objective"])
            log.info("resumed from %s (step %d)", latest, start)
        if main and (self.run_dir / DATA_LOG).exists():
            # Steps after the checkpoint (or all steps, when a first attempt died before its
            # first checkpoint) are redone: drop their log lines.
            _truncate_data_log(self.run_dir, start)
        self.step = start
        dist_.note_progress(start, str(latest) if latest else None)
        result = TrainResult(run_dir=str(self.run_dir), steps=start, resumed_from=start,
                             first_loss=None, final_loss=None,
                             last_checkpoint=str(latest) if latest else None)
        if start >= cfg.total_steps:
            result.metrics = dict(state.get("metrics", {})) if latest is not None else {}
            return result

        writer = None
        if cfg.tensorboard and main:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step: events of steps that are about to be redone are dropped.
            writer = SummaryWriter(str(self.run_dir / "tb"), purge_step=start + 1)
        pbar = None
        if cfg.progress and main:
            from tqdm.auto import tqdm

            pbar = tqdm(total=cfg.total_steps, initial=start, desc=f"train {getattr(self.objective, 'name', '')}",
                        dynamic_ncols=True)
        amp = (torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
               if cfg.precision == "bf16" else nullcontext())
        data_log = open(self.run_dir / DATA_LOG, "a") if main else None
        # FSDP averages gradients over ranks; the loss is already scaled to the global step.
        grad_scale = float(world) if fsdp else 1.0
        max_norm = cfg.max_grad_norm if cfg.max_grad_norm > 0 else float("inf")
        t_start = time.perf_counter()
        metrics: dict[str, float] = {}
        try:
            for step in range(start + 1, cfg.total_steps + 1):
                t0 = time.perf_counter()
                micro = [self.source.next_batch() for _ in range(cfg.grad_accum)]
                weights = [float(self._hook("loss_weight", b, default=1.0)) for b, _ in micro]
                tokens = sum(self._num_tokens(b) for b, _ in micro)
                # the weight sum of the global step (all ranks' micro-batches)
                wsum = dist_.all_reduce_sum([sum(weights)])[0] or 1.0
                lr = schedule.lr_at(step - 1)
                for g in optimizer.param_groups:
                    g["lr"] = lr
                optimizer.zero_grad(set_to_none=True)
                agg: dict[str, float] = {}
                step_loss = 0.0
                for (batch, _), w in zip(micro, weights):
                    batch = to_device(batch, self.device)
                    with amp:
                        loss, m = self.objective.loss(model, batch)
                    lv = float(loss.detach())
                    if not math.isfinite(lv):
                        raise FloatingPointError(f"non-finite loss {lv} at step {step}")
                    (loss * (w / wsum * grad_scale)).backward()
                    step_loss += lv * w / wsum
                    for k, v in m.items():
                        agg[k] = agg.get(k, 0.0) + float(v) * w / wsum
                examples = [list(ex) for _, ex in micro]
                if world > 1:
                    if not fsdp:
                        dist_.all_reduce_grads(params)
                    step_loss, tokens = dist_.all_reduce_sum([step_loss, tokens])
                    tokens = int(tokens)
                    parts = dist_.all_gather_objects((agg, examples))
                    agg = {}
                    for a, _ in parts:
                        for k, v in a.items():
                            agg[k] = agg.get(k, 0.0) + v
                    # the single-process order: micro-batch j is rank 0's slice, rank 1's, ...
                    examples = [e for j in range(cfg.grad_accum) for _, ex in parts for e in ex[j]]
                    rank_examples = [[e for mb in ex for e in mb] for _, ex in parts]
                else:
                    examples = [e for ex in examples for e in ex]
                gn = torch.nn.utils.clip_grad_norm_(params, max_norm)
                gn = float(gn.full_tensor() if hasattr(gn, "full_tensor") else gn)
                optimizer.step()
                dt = time.perf_counter() - t0
                self.step = step
                result.steps = step
                result.losses.append(step_loss)
                result.tokens += tokens
                metrics = {"loss": step_loss, "lr": lr, "grad_norm": gn, "tokens_per_s": tokens / max(dt, 1e-9)}
                if hasattr(self.source, "epoch"):
                    metrics["epoch"] = float(self.source.epoch)
                obj_metrics = {k: v for k, v in agg.items()}
                if data_log is not None:
                    line = {"step": step, "examples": examples}
                    if world > 1:  # which rank consumed (for RL: generated for) which examples
                        line["ranks"] = rank_examples
                    data_log.write(json.dumps(line) + "\n")
                    data_log.flush()
                if writer is not None and step % cfg.log_every == 0:
                    for k, v in metrics.items():
                        writer.add_scalar(f"train/{k}", v, step)
                    for k, v in obj_metrics.items():
                        writer.add_scalar(f"objective/{k}", v, step)
                if pbar is not None:
                    post = {"loss": f"{step_loss:.4f}", "lr": f"{lr:.2e}"}
                    post.update({k: f"{v:.3g}" for k, v in obj_metrics.items() if k not in ("loss", "tokens")})
                    pbar.set_postfix(post, refresh=False)
                    pbar.update(1)
                all_metrics = {**metrics, **{f"objective/{k}": v for k, v in obj_metrics.items()}}
                self._hook("on_step_end", step, model, all_metrics)
                if main:
                    for cb in self.callbacks:
                        cb(step, all_metrics)
                if (cfg.save_every and step % cfg.save_every == 0) or step == cfg.total_steps:
                    if data_log is not None:
                        data_log.flush()
                        os.fsync(data_log.fileno())
                    if writer is not None:
                        writer.flush()
                    path = self._save(step, model, optimizer, extra, names, all_metrics, fsdp)
                    if path is not None:
                        result.last_checkpoint = str(path)
                    else:  # the other ranks know the name rank 0 gives it
                        result.last_checkpoint = str(self.ckpt_root / f"step_{step}")
                dist_.note_progress(step, result.last_checkpoint)
                metrics = all_metrics
                _fault_injection(rank, step)
        finally:
            if data_log is not None:
                data_log.close()
            if pbar is not None:
                pbar.close()
            if writer is not None:
                writer.close()
        result.wall_s = time.perf_counter() - t_start
        result.tokens_per_s = result.tokens / max(result.wall_s, 1e-9)
        result.first_loss = result.losses[0] if result.losses else None
        tail = result.losses[-10:]
        result.final_loss = sum(tail) / len(tail) if tail else None
        result.metrics = metrics
        return result
