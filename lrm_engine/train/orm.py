"""``train_orm`` and the ``lrm train objective=orm`` recipe: an outcome reward model trained on
graded solutions (:mod:`lrm_engine.train.orm_data`), loadable as ``reward=orm``.

    result = train_orm(run_dir, records=load_orm_jsonl("orm.jsonl").records, task=task,
                       objective=ORMObjective(head="prm_token"), train=TrainConfig(total_steps=200))

It is the PRM run (:func:`~lrm_engine.train.prm.train_prm`: tokenizer, model of the head's kind,
the one trainer, checkpoints, resume) on :class:`~lrm_engine.train.orm_data.ORMDataset` units —
the label at each solution's final step tag only — and the model folder gets
``orm_config.json`` (kind ``orm``, the head, its tokens and step tag) instead of
``prm_config.json``: ``reward=orm reward.path=<run>/model`` reads the head from it.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

from .orm_data import ORMDataset, ORMRecord


def train_orm(run_dir: str | Path, *, records: Sequence[ORMRecord], task=None, step_tag: str | None = None,
              objective=None, data_info: Mapping[str, Any] | None = None, **kwargs):
    """Train an ORM on graded solutions; resumable; returns the :class:`TrainResult` (keyword
    arguments as :func:`~lrm_engine.train.prm.train_prm`: model, model_size, data, train ...)."""
    from ..objectives.orm import ORMObjective
    from .prm import train_prm

    if step_tag is None:
        if task is None or not hasattr(task, "step"):
            raise ValueError("train_orm: give task= (its step delimiter is the step tag) or step_tag=")
        step_tag = task.step.delimiter
    prm_records = [r.to_prm_record(step_tag) for r in records]
    info = dict(data_info or {})
    info.setdefault("solutions", len(records))
    info.setdefault("correct", int(sum(r.label >= 0.5 for r in records)))
    return train_prm(run_dir, records=prm_records, task=task, step_tag=step_tag,
                     objective=objective if objective is not None else ORMObjective(),
                     evaluate=False, data_info=info, dataset_cls=ORMDataset, **kwargs)


def orm_records(cfg, task, run_dir: Path) -> tuple[list[ORMRecord], dict[str, Any]]:
    """The ORM records of a run: ``objective.data`` = ``oracle`` (the task's noisy solutions
    graded by the task) or a TRL prompt/completion/label JSONL file."""
    from ..cli import UsageError
    from .orm_data import load_orm_jsonl, oracle_orm_records, write_orm_jsonl

    o = cfg.objective
    if o.data == "oracle":
        try:
            records = oracle_orm_records(task, o.oracle.split, limit=o.num_records,
                                         noise_fraction=o.oracle.noise_fraction,
                                         noise_seed=o.oracle.noise_seed)
        except ValueError as e:
            raise UsageError(str(e), show_usage=False) from e
        run_dir.mkdir(parents=True, exist_ok=True)
        write_orm_jsonl(run_dir / "orm_data.oracle.jsonl", records)
        return records, {"source": "oracle (task's noisy solutions graded by the task)",
                         "records": len(records)}
    path = Path(str(o.data))
    if not path.is_file():
        raise UsageError(f"objective.data={o.data!r}: no such file (give a JSONL of "
                         f'{{"prompt", "completion", "label"}} records, or objective.data=oracle)',
                         show_usage=False)
    report = load_orm_jsonl(path, limit=o.num_records)
    if report.skipped:
        print(f"lrm train: {report.skipped} malformed ORM records skipped in {path} "
              f"(first: {report.errors[0]})", file=sys.stderr)
    if not report.records:
        raise UsageError(f"{path}: no valid ORM record", show_usage=False)
    return report.records, {"source": str(path.resolve()), "records": len(report.records),
                            "skipped": report.skipped, "errors": report.errors[:20]}


def recipe_orm(cfg, components, run_dir: Path) -> dict[str, Any]:
    """``lrm train objective=orm``: :func:`train_orm` on the run's records."""
    from ..verbs.train import _hook_callback, _summary, _train_config
    from .prm import PRMDataConfig

    o = cfg.objective
    records, info = orm_records(cfg, components.task, run_dir)
    result = train_orm(run_dir, records=records, task=components.task, objective=components.objective,
                       model=o.model.init or None, model_size=o.model.size, model_seed=o.model.seed,
                       data=PRMDataConfig(max_length=o.max_length, shuffle=o.shuffle),
                       train=_train_config(cfg), data_info=info, callbacks=[_hook_callback()])
    out = _summary("orm", str(cfg.task.name), result)
    out["data"] = {k: v for k, v in info.items() if k != "errors"}
    out["data"]["correct"] = int(sum(r.label >= 0.5 for r in records))
    print(f"lrm train: ORM on {len(records)} graded solutions ({out['data']['correct']} correct) "
          f"-> {result.model_dir} (reward=orm reward.path=<it>)", file=sys.stderr)
    return out
