"""``train_pref``: the entry point behind ``lrm train objective=<dpo|ipo|odpo|step_dpo>``.

    result = train_pref(run_dir, records=load_pref_jsonl(path).records, objective=DPOObjective(),
                        model="<sft run>/model", train=TrainConfig(total_steps=200, lr=5e-5))

It builds (or reuses, on resume) the run's tokenizer and policy (a local model folder — normally
the SFT policy — or a fresh tiny Llama), the tokenised pairs (:mod:`lrm_engine.train.pref_data`)
and their resumable batch source, and runs the one :class:`~lrm_engine.train.trainer.Trainer`.
The objective's ``setup`` builds the frozen reference once (a copy of the starting policy, or
the objective's ``ref_model`` folder). The trained policy ends up in ``<run_dir>/model``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from . import distributed as dist_
from .pref_data import PrefBatchSource, PrefDataset, PrefRecord
from ..leakage import init_dir, problem_id, write_trained_on
from .sft import _coerce, _run_model, _run_tokenizer
from .trainer import TrainConfig, Trainer, TrainResult, join_group


@dataclass
class PrefDataConfig:
    """How the preference pairs are tokenised and ordered."""

    # Longest sequence (tokens, context + completion); longer ones are cut.
    max_length: int = 256
    # Append the end-of-sequence token to each completion (full completions; not for step pairs).
    add_eos: bool = True
    # Text appended to each completion (step pairs: the step delimiter).
    completion_suffix: str = ""
    # Shuffle the pairs each epoch (seed: TrainConfig.seed).
    shuffle: bool = True


def train_pref(run_dir: str | Path, *, records: Sequence[PrefRecord], objective, model=None,
               model_size: str = "tiny", model_seed: int = 0, tokenizer=None,
               data: PrefDataConfig | Mapping | None = None, train: TrainConfig | Mapping | None = None,
               data_info: Mapping[str, Any] | None = None, task_name: str = "unknown",
               callbacks: Sequence[Callable[[int, Mapping[str, float]], None]] = ()) -> TrainResult:
    """Train a policy with a preference objective (see the module docstring); ``task_name``
    names the task the records' problems come from (lrm_engine/leakage.py)."""
    run_dir = Path(run_dir)
    data_cfg = _coerce(PrefDataConfig, data)
    train_cfg = _coerce(TrainConfig, train)
    join_group(train_cfg)
    with dist_.main_first():  # rank 0 writes the run's tokenizer, the others read it
        run_dir.mkdir(parents=True, exist_ok=True)
        tokenizer = _run_tokenizer(run_dir, tokenizer, model)

    dataset = PrefDataset(records, tokenizer, data_cfg.max_length, add_eos=data_cfg.add_eos,
                          completion_suffix=data_cfg.completion_suffix)
    source = PrefBatchSource(dataset, train_cfg.micro_batch_size, seed=train_cfg.seed,
                             shuffle=data_cfg.shuffle)
    model_arg = model
    model = _run_model(model, tokenizer, model_size=model_size, model_seed=model_seed,
                       max_length=data_cfg.max_length)

    if dist_.is_main():
        (run_dir / "run_config.json").write_text(json.dumps({
            "objective": getattr(objective, "name", None), "model_size": model_size,
            "model_seed": model_seed, "data": asdict(data_cfg), "train": asdict(train_cfg),
            "num_records": len(records), "num_pairs": len(dataset), "dropped": dataset.dropped,
            "dataset_tokens": dataset.num_tokens, "data_info": dict(data_info or {}),
            "world_size": dist_.world_size(),
        }, indent=1, default=str))
    trainer = Trainer(model, objective, source, train_cfg, run_dir, tokenizer=tokenizer,
                      callbacks=callbacks)
    result = trainer.train()
    out = run_dir / "model"
    result.model_dir = str(out)
    trainer.save_model(out)
    if dist_.is_main():
        tokenizer.save_pretrained(str(out))
        write_trained_on(out, task_name, [problem_id(r.meta) for r in records], init=init_dir(model_arg))
        (run_dir / "result.json").write_text(json.dumps(result.to_json() | {"losses": result.losses[-50:]},
                                                        indent=1))
    return result
