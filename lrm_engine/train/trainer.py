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

    def __post_init__(self):
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be 'fp32' or 'bf16', got {self.precision!r}")
        for k in ("total_steps", "micro_batch_size", "grad_accum", "log_every"):
            if getattr(self, k) <= 0:
                raise ValueError(f"{k} must be positive")


@dataclass
class TrainResult:
    """What a training run did (this process's part, plus where things are)."""

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
    decay, no_decay, seen = [], [], set()
    for _, p in params:
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (no_decay if p.ndim < 2 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


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

    # -- optional objective hooks, with defaults ---------------------------------------------
    def _hook(self, name: str, *args, default=None):
        fn = getattr(self.objective, name, None)
        return fn(*args) if callable(fn) else default

    def _extra_modules(self) -> dict[str, torch.nn.Module]:
        return dict(self._hook("trainable_modules", default={}) or {})

    def _num_tokens(self, batch) -> int:
        fn = getattr(self.objective, "num_tokens", None)
        return int(fn(batch)) if callable(fn) else default_num_tokens(batch)

    # -- the loop ---------------------------------------------------------------------------
    def train(self) -> TrainResult:
        cfg = self.cfg
        if cfg.num_threads:
            torch.set_num_threads(cfg.num_threads)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        ckpt.clean_partial(self.ckpt_root)
        latest = ckpt.latest_checkpoint(self.ckpt_root) if cfg.resume else None
        if not cfg.resume and (ckpt.checkpoint_dirs(self.ckpt_root) or (self.run_dir / DATA_LOG).exists()):
            raise FileExistsError(f"{self.run_dir} holds an earlier run and resume=False; use a new run_dir")

        if latest is None:
            torch.manual_seed(cfg.seed)
            import random as _random

            _random.seed(cfg.seed)
        model = self.model.to(self.device)
        model.train()
        self._hook("setup", model, self.device)
        extra = self._extra_modules()
        for m in extra.values():
            m.to(self.device).train()
        named = list(model.named_parameters()) + [
            (f"{n}.{k}", p) for n, m in extra.items() for k, p in m.named_parameters()]
        params = [p for _, p in named if p.requires_grad]
        optimizer = torch.optim.AdamW(_param_groups(named, cfg.weight_decay), lr=cfg.lr,
                                      betas=(cfg.beta1, cfg.beta2), eps=cfg.eps)
        schedule = CosineWithWarmup(cfg.lr, cfg.total_steps, cfg.warmup_steps, cfg.min_lr_ratio)

        start = 0
        if latest is not None:
            state = ckpt.load_checkpoint(latest, model=model, optimizer=optimizer, extra_modules=extra)
            start = int(state["step"])
            self.source.load_state_dict(state["data"])
            if state.get("objective"):
                self._hook("load_state_dict", state["objective"])
            log.info("resumed from %s (step %d)", latest, start)
        if (self.run_dir / DATA_LOG).exists():
            # Steps after the checkpoint (or all steps, when a first attempt died before its
            # first checkpoint) are redone: drop their log lines.
            _truncate_data_log(self.run_dir, start)
        self.step = start
        result = TrainResult(run_dir=str(self.run_dir), steps=start, resumed_from=start,
                             first_loss=None, final_loss=None,
                             last_checkpoint=str(latest) if latest else None)
        if start >= cfg.total_steps:
            result.metrics = dict(state.get("metrics", {})) if latest is not None else {}
            return result

        writer = None
        if cfg.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step: events of steps that are about to be redone are dropped.
            writer = SummaryWriter(str(self.run_dir / "tb"), purge_step=start + 1)
        pbar = None
        if cfg.progress:
            from tqdm.auto import tqdm

            pbar = tqdm(total=cfg.total_steps, initial=start, desc=f"train {getattr(self.objective, 'name', '')}",
                        dynamic_ncols=True)
        amp = (torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
               if cfg.precision == "bf16" else nullcontext())
        data_log = open(self.run_dir / DATA_LOG, "a")
        t_start = time.perf_counter()
        metrics: dict[str, float] = {}
        try:
            for step in range(start + 1, cfg.total_steps + 1):
                t0 = time.perf_counter()
                micro = [self.source.next_batch() for _ in range(cfg.grad_accum)]
                weights = [float(self._hook("loss_weight", b, default=1.0)) for b, _ in micro]
                wsum = sum(weights) or 1.0
                lr = schedule.lr_at(step - 1)
                for g in optimizer.param_groups:
                    g["lr"] = lr
                optimizer.zero_grad(set_to_none=True)
                agg: dict[str, float] = {}
                step_loss, tokens = 0.0, 0
                for (batch, _), w in zip(micro, weights):
                    tokens += self._num_tokens(batch)
                    batch = to_device(batch, self.device)
                    with amp:
                        loss, m = self.objective.loss(model, batch)
                    lv = float(loss.detach())
                    if not math.isfinite(lv):
                        raise FloatingPointError(f"non-finite loss {lv} at step {step}")
                    (loss * (w / wsum)).backward()
                    step_loss += lv * w / wsum
                    for k, v in m.items():
                        agg[k] = agg.get(k, 0.0) + float(v) * w / wsum
                if cfg.max_grad_norm > 0:
                    gn = float(torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm))
                else:
                    gn = float(torch.norm(torch.stack([p.grad.norm() for p in params if p.grad is not None])))
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
                data_log.write(json.dumps({"step": step, "examples": [e for _, ex in micro for e in ex]}) + "\n")
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
                for cb in self.callbacks:
                    cb(step, all_metrics)
                if (cfg.save_every and step % cfg.save_every == 0) or step == cfg.total_steps:
                    data_log.flush()
                    os.fsync(data_log.fileno())
                    if writer is not None:
                        writer.flush()
                    obj_state = self._hook("state_dict", default={}) or {}
                    path = ckpt.save_checkpoint(
                        self.ckpt_root, step, model=model, optimizer=optimizer, extra_modules=extra,
                        tokenizer=self.tokenizer, keep_last=cfg.keep_last,
                        state={"data": self.source.state_dict(), "objective": obj_state,
                               "metrics": all_metrics, "total_steps": cfg.total_steps,
                               "objective_name": getattr(self.objective, "name", None)})
                    result.last_checkpoint = str(path)
                metrics = all_metrics
        finally:
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
