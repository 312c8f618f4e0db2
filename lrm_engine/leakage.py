"""The leakage guard: no run evaluates a model on problems that model was trained on.

Every model folder that ``lrm train`` (or ``lrm run``) writes carries ``lrm_trained_on.json``:
``{"<task name>": [problem ids]}`` — the problems of its training data, merged with those of the
model it was initialised from. Two checks read it:

- ``check_training_data``: a training run whose data holds problems of the split it evaluates
  on (e.g. the PRM's held-out AUROC) stops before training;
- ``check_models``: ``lrm search`` / ``lrm evaluate`` with a policy or reward model trained on
  some of the problems it is asked to evaluate stops before searching.

Both raise :class:`LeakageError` (exit 2, one line naming the models or data, the split, how many
problems overlap, one of them, and the fix). Ids are the tasks' own (``arith``: a hash of the
question text, so the same question is the same id whichever split holds it).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Mapping

from lrm_engine.errors import UserError

TRAINED_ON = "lrm_trained_on.json"


class LeakageError(UserError):
    """A run would evaluate on problems its model (or its training data) contains."""


def problem_id(record: Mapping[str, Any]) -> str | None:
    """The problem a training record comes from: ``problem_id``, else ``id`` up to a ``#``."""
    meta = record.get("meta") if isinstance(record.get("meta"), Mapping) else record
    pid = meta.get("problem_id", meta.get("id"))
    if pid is None:
        return None
    return str(pid).split("#", 1)[0]


def init_dir(model: Any) -> str | None:
    """The folder a model was initialised from, when ``model`` is one (not an nn.Module)."""
    return str(model) if isinstance(model, (str, Path)) else None


def trained_on(model_dir: str | Path | None) -> dict[str, set[str]]:
    """``{task: ids}`` a model folder was trained on (empty when it records nothing)."""
    if model_dir is None:
        return {}
    path = Path(str(model_dir)) / TRAINED_ON
    if not path.is_file():
        return {}
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        return {}
    return {str(t): {str(i) for i in ids} for t, ids in doc.items() if isinstance(ids, list)}


def write_trained_on(model_dir: str | Path, task: str, ids: Iterable[str],
                     init: str | Path | None = None) -> None:
    """Record that ``model_dir`` was trained on ``ids`` of ``task`` (plus what ``init`` was)."""
    doc = trained_on(init)
    doc.setdefault(str(task), set()).update(str(i) for i in ids if i is not None)
    out = Path(model_dir) / TRAINED_ON
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps({t: sorted(v) for t, v in doc.items()}) + "\n", encoding="utf-8")
    tmp.replace(out)


def _overlap_message(what: str, task: str, split: str, overlap: set[str], fix: str) -> str:
    example = sorted(overlap)[0]
    return (f"{what} contains {len(overlap)} problem(s) of the {task} {split} split this run "
            f"evaluates on (e.g. {example}); {fix}")


def check_training_data(what: str, task: str, train_ids: Iterable[str], eval_split: str,
                        eval_ids: Iterable[str]) -> None:
    """Refuse training data that holds problems of the split the run evaluates on."""
    overlap = {str(i) for i in train_ids if i is not None} & {str(i) for i in eval_ids}
    if overlap:
        raise LeakageError(_overlap_message(
            what, task, eval_split, overlap,
            "annotate or sample the train split (search_run.split=train), or evaluate on "
            "another split"))


def check_models(models: Mapping[str, str | Path | None], task: str, split: str,
                 eval_ids: Iterable[str]) -> None:
    """Refuse to evaluate models (``{"policy.path": dir, ...}``) on problems they trained on."""
    ids = {str(i) for i in eval_ids}
    for field, path in models.items():
        seen = trained_on(path).get(str(task), set())
        overlap = seen & ids
        if overlap:
            raise LeakageError(_overlap_message(
                f"{field}={path} was trained on data that", task, split, overlap,
                "evaluate on a split it was not trained on (search_run.split=...), or retrain "
                "it on the train split"))
