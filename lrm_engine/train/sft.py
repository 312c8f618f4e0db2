"""``train_sft``: the entry point behind ``lrm train objective=sft task=<task>``.

    result = train_sft(run_dir, task=task, objective=objective,
                       data=SFTDataConfig(num_examples=2000, noise_fraction=0.2),
                       train=TrainConfig(total_steps=300, micro_batch_size=32, lr=2e-3),
                       model_size="tiny")

It builds (or reuses, on resume) the run's tokenizer and model, the SFT examples from the task
(gold solutions, a share with one injected wrong step), the dataset and batch source, and runs
the one :class:`~lrm_engine.train.trainer.Trainer`. Calling it again with the same arguments
after an interruption resumes from the newest checkpoint. The trained policy ends up in
``<run_dir>/model`` (safetensors + tokenizer: a Hugging Face model folder).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from ..leakage import init_dir, problem_id, write_trained_on
from .data import SFTBatchSource, SFTDataset, SFTExample, sft_examples_from_task
from . import distributed as dist_
from .trainer import TrainConfig, Trainer, TrainResult, join_group


@dataclass
class SFTDataConfig:
    """Which SFT data to build from the task."""

    # Task split to train on.
    split: str = "train"
    # Use the first this many examples of the split (None: all).
    num_examples: int | None = 2000
    # Share of solutions that carry one injected wrong step (needs task.noisy_solutions).
    noise_fraction: float = 0.0
    # Seed of the noise injector.
    noise_seed: int = 0
    # Longest sequence (tokens, prompt + completion + eos); longer ones are cut.
    max_length: int = 256
    # Pack several examples per row (block-diagonal attention; no cross-talk).
    pack: bool = False
    # Shuffle the examples each epoch (seed: TrainConfig.seed).
    shuffle: bool = True


def _coerce(cls, value):
    if value is None:
        return cls()
    if isinstance(value, cls):
        return value
    if isinstance(value, Mapping):
        names = {f.name for f in fields(cls)}
        unknown = set(value) - names
        if unknown:
            raise TypeError(f"unknown {cls.__name__} fields {sorted(unknown)}; fields are {sorted(names)}")
        return cls(**dict(value))
    raise TypeError(f"expected {cls.__name__} or a mapping, got {type(value).__name__}")

def _run_tokenizer(run_dir: Path, tokenizer, model, extra_chars: str = ""):
    """The tokenizer of a training run: ``tokenizer`` if given, else the one saved in
    ``<run_dir>/tokenizer`` by an earlier start, else the model folder's, else a new character
    tokenizer (with ``extra_chars``). Saved in ``<run_dir>/tokenizer`` on the first start."""
    from ..tokenization import build_char_tokenizer, load_tokenizer, save_tokenizer

    tok_dir = run_dir / "tokenizer"
    if tokenizer is None:
        if (tok_dir / "tokenizer.json").is_file():
            tokenizer = load_tokenizer(tok_dir)
        elif isinstance(model, (str, Path)) and (Path(model) / "tokenizer.json").is_file():
            tokenizer = load_tokenizer(model)
        else:
            tokenizer = build_char_tokenizer(extra_chars=extra_chars)
    if not (tok_dir / "tokenizer.json").is_file():
        save_tokenizer(tokenizer, tok_dir)
    return tokenizer


def _run_model(model, tokenizer, *, model_size: str, model_seed: int, max_length: int,
               quiet: bool = False):
    """The model of a training run: ``model`` itself, or loaded from its folder (``quiet``: no
    progress bar), or (None) a new tiny Llama of ``model_size`` seeded by ``model_seed``."""
    if model is None:
        from ..models_tiny import make_tiny_llama

        return make_tiny_llama(model_size, tokenizer=tokenizer, seed=model_seed,
                               max_position_embeddings=max(512, max_length))
    if isinstance(model, (str, Path)):
        from transformers import AutoModelForCausalLM
        from transformers.utils import logging as hf_logging

        was = hf_logging.is_progress_bar_enabled()
        if quiet:
            hf_logging.disable_progress_bar()
        try:
            return AutoModelForCausalLM.from_pretrained(str(model), local_files_only=True)
        finally:
            if was:
                hf_logging.enable_progress_bar()
    return model



def train_sft(
    run_dir: str | Path,
    *,
    task=None,
    examples: Sequence[SFTExample] | None = None,
    objective=None,
    model=None,
    model_size: str = "tiny",
    model_seed: int = 0,
    tokenizer=None,
    data: SFTDataConfig | Mapping[str, Any] | None = None,
    train: TrainConfig | Mapping[str, Any] | None = None,
    callbacks: Sequence[Callable[[int, Mapping[str, float]], None]] = (),
) -> TrainResult:
    """Train a policy with SFT; resumable. Returns a :class:`TrainResult` (``model_dir`` set).

    - ``task`` (a Task) or ``examples`` (ready-made :class:`SFTExample` list): the data.
    - ``objective``: an objective object (default: ``SFTObjective()``).
    - ``model``: an ``nn.Module`` or a local model folder to start from; default a fresh
      :func:`~lrm_engine.models_tiny.make_tiny_llama` of ``model_size`` seeded by ``model_seed``.
    - ``tokenizer``: default: the one saved in ``<run_dir>/tokenizer`` by an earlier start, else
      the model folder's, else a new character tokenizer (:mod:`lrm_engine.tokenization`).
    - ``data`` / ``train``: :class:`SFTDataConfig` / :class:`TrainConfig` or plain dicts.
    """
    run_dir = Path(run_dir)
    model_arg = model
    data_cfg = _coerce(SFTDataConfig, data)
    train_cfg = _coerce(TrainConfig, train)
    join_group(train_cfg)

    extra = ""
    if task is not None and hasattr(task, "step"):
        extra = task.step.delimiter + task.step.answer_prefix
    with dist_.main_first():  # rank 0 writes the run's tokenizer, the others read it
        run_dir.mkdir(parents=True, exist_ok=True)
        tokenizer = _run_tokenizer(run_dir, tokenizer, model, extra)

    if examples is None:
        if task is None:
            raise ValueError("train_sft: give task= or examples=")
        examples = sft_examples_from_task(task, data_cfg.split, limit=data_cfg.num_examples,
                                          noise_fraction=data_cfg.noise_fraction,
                                          noise_seed=data_cfg.noise_seed)
    dataset = SFTDataset(examples, tokenizer, max_length=data_cfg.max_length, pack=data_cfg.pack)
    source = SFTBatchSource(dataset, train_cfg.micro_batch_size, seed=train_cfg.seed, shuffle=data_cfg.shuffle)

    model = _run_model(model, tokenizer, model_size=model_size, model_seed=model_seed,
                       max_length=data_cfg.max_length)
    if objective is None:
        from ..objectives.sft import SFTObjective

        objective = SFTObjective()

    if dist_.is_main():
        (run_dir / "run_config.json").write_text(json.dumps({
            "objective": getattr(objective, "name", None), "task": getattr(task, "name", None),
            "model_size": model_size, "model_seed": model_seed, "data": asdict(data_cfg),
            "train": asdict(train_cfg), "num_examples": len(examples), "num_units": len(dataset),
            "dataset_tokens": dataset.num_tokens, "world_size": dist_.world_size(),
        }, indent=1))

    trainer = Trainer(model, objective, source, train_cfg, run_dir, tokenizer=tokenizer, callbacks=callbacks)
    result = trainer.train()
    out = run_dir / "model"
    result.model_dir = str(out)
    trainer.save_model(out)
    if dist_.is_main():
        tokenizer.save_pretrained(str(out))
        write_trained_on(out, getattr(task, "name", None) or "unknown",
                         [problem_id(e.meta) for e in examples], init=init_dir(model_arg))
        (run_dir / "result.json").write_text(json.dumps(result.to_json() | {"losses": result.losses[-50:]}, indent=1))
    return result
