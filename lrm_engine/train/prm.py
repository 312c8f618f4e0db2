"""``train_prm``: the entry point behind ``lrm train objective=prm``, plus step-level evaluation.

    result = train_prm(run_dir, task=task, records=oracle_prm_records(task, limit=2000),
                       objective=PRMObjective(), train=TrainConfig(total_steps=300),
                       model_size="tiny", evaluate=PRMEvalConfig())

It builds (or reuses, on resume) the tokenizer and the PRM (a fresh tiny Llama, or a local model
folder such as the SFT policy), tokenises the PRM records with the task's step delimiter as the
step tag, runs the one :class:`~lrm_engine.train.trainer.Trainer` with the ``prm`` objective,
and saves ``<run_dir>/model``: a Hugging Face model folder plus ``prm_config.json`` (what a
``prm_token`` reward model needs to score steps: the good/bad tokens and the step tag).

Evaluation (:func:`evaluate_prm_on_task`): the PRM scores every step of solutions to *held-out*
problems (the task's test split; gold solutions and solutions with one injected wrong step
carried through) and the scores are compared with the task's exact prefix labels: step-level
AUROC (the issue's metric; of the prefix score, the running minimum of the step scores that
min-aggregated search ranks by, and of the raw step scores), step accuracy at 0.5, the AUROC on the steps up to each first
error (does the PRM catch the wrong step itself), the AUROC that step position alone reaches
(prefix labels fall with depth: a PRM must beat it to be judging steps; see
:func:`prm_step_metrics`) and the solution-level AUROC of the min-step score against
final-answer correctness. Results go to ``<run_dir>/eval.json``.
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

from ..leakage import check_training_data, init_dir, problem_id, write_trained_on
from ..metrics import auroc, binary_accuracy
from .prm_data import PRMBatchSource, PRMDataset, PRMRecord, collate_prm, tokenize_prm
from .sft import _coerce, _run_model, _run_tokenizer
from . import distributed as dist_
from .trainer import TrainConfig, Trainer, TrainResult, join_group

PRM_CONFIG_FILE = "prm_config.json"


@dataclass
class PRMDataConfig:
    """How PRM records become training units."""

    # Longest sequence in tokens (prompt + steps + tags); steps past it are cut.
    max_length: int = 256
    # Shuffle the records each epoch (seed: TrainConfig.seed).
    shuffle: bool = True


@dataclass
class PRMEvalConfig:
    """Held-out step-level evaluation against the task's exact prefix labels."""

    # Task split of the held-out problems.
    split: str = "test"
    # Number of held-out problems (their first this many; None: all).
    num_problems: int | None = 500
    # Share of held-out solutions carrying one injected wrong step.
    noise_fraction: float = 0.5
    # Seed of the noise injector for the held-out solutions.
    noise_seed: int = 1
    # Sequences per scoring forward pass.
    batch_size: int = 64


def write_prm_config(model_dir: str | Path, objective, tokenizer, step_tag: str) -> dict:
    """``prm_config.json`` in a model folder (``orm_config.json`` for an ORM: the objective's
    ``config_file``): how to read scores off this model — its kind, step tag and read-out."""
    from .prm_data import tag_token_ids

    head = getattr(objective, "head", "prm_token")
    readout = getattr(objective, "readout", "tag")
    seq = "; sequence = <bos> prompt (step step_tag)*"
    doc = {"kind": head, "step_tag": step_tag, "step_tag_ids": tag_token_ids(tokenizer, step_tag)}
    if head == "prm_token":
        doc.update({
            "good_token": objective.good_token, "bad_token": objective.bad_token,
            "good_token_id": objective.good_token_id, "bad_token_id": objective.bad_token_id,
            "readout": readout,
            "score": ("p_good = softmax([z_good, z_bad])[0] of the LM head at the last token of the "
                      "step tag after each step" if readout == "tag" else
                      "p_good = min over the step's tokens (the tag excluded) of p(token | prefix)") + seq,
        })
    elif head == "prm_head":
        doc.update({"positive_class": 1, "num_labels": 2,
                    "score": "p_good = softmax(score(h))[1], h = the decoder's last hidden state at "
                             "the last token of the step tag after each step" + seq})
    else:
        doc.update({"num_labels": 1,
                    "score": "v = sigmoid(score(h)), h = the decoder's last hidden state at the last "
                             "token of the step tag after each step" + seq})
    kind = getattr(objective, "name", "prm")
    if kind == "orm":
        doc = {"kind": "orm", "head": head,
               **{k: v for k, v in doc.items() if k != "kind"},
               "where": "read at the step tag after the final step of a finished solution only"}
    name = getattr(objective, "config_file", PRM_CONFIG_FILE)
    (Path(model_dir) / name).write_text(json.dumps(doc, indent=1))
    return doc


def prm_model(objective, model, tokenizer, *, model_size: str, model_seed: int, max_length: int,
              quiet: bool = False):
    """The model a PRM run trains: a causal LM for ``head=prm_token`` (:func:`_run_model`), else
    a token-classification model with the head's outputs (2: ``prm_head``, 1: ``value_head``) —
    from a folder (the decoder's weights; a new ``score`` head), an ``nn.Module`` as given, or a
    fresh tiny Llama's architecture seeded by ``model_seed``."""
    head = getattr(objective, "head", "prm_token")
    if head == "prm_token" or not (model is None or isinstance(model, (str, Path))):
        return _run_model(model, tokenizer, model_size=model_size, model_seed=model_seed,
                          max_length=max_length, quiet=quiet)
    from ..objectives.prm import HEAD_OUTPUTS

    n = HEAD_OUTPUTS[head]
    if model is None:
        from transformers import LlamaForTokenClassification

        from ..models_tiny import tiny_llama_config

        cfg = tiny_llama_config(model_size, vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                                eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                                max_position_embeddings=max(512, max_length))
        cfg.num_labels = n
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(model_seed)
            out = LlamaForTokenClassification(cfg)
        return out.train()
    from transformers import AutoModelForTokenClassification
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "newly initialized: score.weight" is the point here
    try:
        out = AutoModelForTokenClassification.from_pretrained(str(model), num_labels=n,
                                                              local_files_only=True)
    finally:
        hf_logging.set_verbosity(verbosity)
    return out.train()


def read_prm_config(model_dir: str | Path) -> dict:
    path = Path(model_dir) / PRM_CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{model_dir} has no {PRM_CONFIG_FILE}: not a prm_token model folder")
    return json.loads(path.read_text())


def load_prm_token(model_dir: str | Path, device: str = "cpu"):
    """``(model, tokenizer, prm_config)`` of a PRM folder written by :func:`train_prm`."""
    from transformers import AutoModelForCausalLM

    from ..tokenization import load_tokenizer

    cfg = read_prm_config(model_dir)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), local_files_only=True).to(device)
    model.eval()
    return model, load_tokenizer(model_dir), cfg


@torch.no_grad()
def score_steps(model, tokenizer, solutions: Sequence[tuple[str, Sequence[str]]], *,
                good_token_id: int, bad_token_id: int, step_tag: str = "\n",
                max_length: int = 512, batch_size: int = 64, readout: str = "tag",
                head: str = "prm_token") -> list[list[float]]:
    """P(good) of every step of every ``(prompt, steps)`` solution, with a full forward pass
    (``readout``: "tag" or "likelihood"; ``head``: prm_token, prm_head or value_head, see
    :mod:`lrm_engine.objectives.prm`).

    Returns one list per solution, one score per step (steps cut by ``max_length`` get nan).
    The sequence layout is the training one (:func:`~lrm_engine.train.prm_data.tokenize_prm`).
    """
    from ..objectives.prm import PRMObjective

    reader = PRMObjective(readout=readout, head=head, good_token_id=good_token_id,
                          bad_token_id=bad_token_id)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id
    out: list[list[float]] = [[math.nan] * len(steps) for _, steps in solutions]
    units = []
    for i, (prompt, steps) in enumerate(solutions):
        u = tokenize_prm(tokenizer, prompt, list(steps), None, step_tag, max_length, i)
        if u is not None:
            units.append(u)
    # longest first: less padding per batch
    units.sort(key=lambda u: -len(u.input_ids))
    for s in range(0, len(units), batch_size):
        chunk = units[s:s + batch_size]
        batch = collate_prm(chunk, pad)
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
        p = reader.tag_scores(model, batch).float().cpu().tolist()
        k = 0
        for u in chunk:  # tag_mask is read row-major: units in order, tags in order
            for j in range(len(u.tag_positions)):
                out[u.index][j] = p[k]
                k += 1
    if was_training:
        model.train()
    return out


def evaluate_prm_on_task(model, tokenizer, task, *, good_token_id: int, bad_token_id: int,
                         config: PRMEvalConfig | Mapping[str, Any] | None = None,
                         max_length: int = 512, readout: str = "tag",
                         head: str = "prm_token") -> dict[str, Any]:
    """Step-level AUROC (and friends) of a PRM (``head``: its kind) on held-out problems of a task.

    Needs a task with exact step labels and a noise injector (``noisy_solutions``,
    ``prefix_labels``, ``grade``). Labels: ``task.prefix_labels`` (step i good iff steps 0..i
    are all correct). AUROC is nan (reported as None) when only one class is present.
    """
    cfg = _coerce(PRMEvalConfig, config)
    sols = task.noisy_solutions(cfg.split, fraction=cfg.noise_fraction, seed=cfg.noise_seed,
                                limit=cfg.num_problems)
    pairs = [(task.prompt(s.example.problem), list(s.steps)) for s in sols]
    scores = score_steps(model, tokenizer, pairs, good_token_id=good_token_id,
                         bad_token_id=bad_token_id, step_tag=task.step.delimiter,
                         max_length=max_length, batch_size=cfg.batch_size, readout=readout,
                         head=head)
    labels = [task.prefix_labels(s.example, s.steps) for s in sols]
    sol_min, sol_ok = [], []
    for s, sc in zip(sols, scores):
        kept = [v for v in sc if not math.isnan(v)]
        if kept:
            sol_min.append(min(kept))
            sol_ok.append(task.grade(s.example, task.step.join_steps(s.steps)))
    out = prm_step_metrics(scores, labels, [s.error_step for s in sols])
    out["solution_auroc_min"] = _round(auroc(sol_min, sol_ok)) if sol_min else None
    out["num_solutions"] = len(sols)
    out["labels"] = "exact prefix labels of the task (step i good iff steps 0..i correct)"
    out["eval"] = asdict(cfg)
    return out


def _round(x: float) -> float | None:
    return None if math.isnan(x) else round(float(x), 6)


def prm_step_metrics(scores: Sequence[Sequence[float]], labels: Sequence[Sequence[bool]],
                     error_steps: Sequence[int]) -> dict[str, Any]:
    """Step-level metrics of PRM ``scores`` against exact prefix ``labels`` (one list per
    solution; nan scores — steps cut by the length limit — are left out).

    - ``step_auroc``: AUROC over every step of the *prefix score* — the running minimum of the
      step scores up to the step, which is what a search with ``aggregation=min`` ranks a
      partial path by — against the prefix label (the headline metric). A PRM that judges
      each step on its own (the likelihood read-out) carries an earlier error forward this way.
    - ``step_auroc_raw``: AUROC of each step's own score.
    - ``step_accuracy``: ``score >= 0.5`` agrees with the label.
    - ``error_step_auroc``: AUROC over the steps up to and including each solution's first wrong
      step (``error_steps[i]``, -1: none, all steps kept): does the PRM catch the wrong step
      itself, rather than only the steps after it?
    - ``position_baseline_auroc``: the AUROC that ``score = -(step index)`` gets on the same steps.
      Prefix labels fall with depth, so a PRM that learned only "later steps are worse" reaches
      this figure without judging any step; a PRM that checks steps must beat it.
    """
    flat_s, flat_y, pos, loc_s, loc_y, run_s = [], [], [], [], [], []
    for sc, lab, err in zip(scores, labels, error_steps):
        run = math.inf
        for i, (v, y) in enumerate(zip(sc, lab)):
            if math.isnan(v):
                continue
            run = min(run, v)
            run_s.append(run)
            flat_s.append(v)
            flat_y.append(bool(y))
            pos.append(-float(i))
            if err < 0 or i <= err:
                loc_s.append(v)
                loc_y.append(bool(y))
    return {
        "step_auroc": _round(auroc(run_s, flat_y)),
        "step_auroc_raw": _round(auroc(flat_s, flat_y)),
        "step_accuracy": _round(binary_accuracy(flat_s, flat_y)),
        "error_step_auroc": _round(auroc(loc_s, loc_y)),
        "position_baseline_auroc": _round(auroc(pos, flat_y)),
        "num_steps": len(flat_s),
        "num_good_steps": int(sum(flat_y)),
    }


def train_prm(
    run_dir: str | Path,
    *,
    records: Sequence[PRMRecord],
    task=None,
    step_tag: str | None = None,
    objective=None,
    model=None,
    model_size: str = "tiny",
    model_seed: int = 0,
    tokenizer=None,
    data: PRMDataConfig | Mapping[str, Any] | None = None,
    train: TrainConfig | Mapping[str, Any] | None = None,
    evaluate: PRMEvalConfig | Mapping[str, Any] | None | bool = None,
    data_info: Mapping[str, Any] | None = None,
    callbacks: Sequence[Callable[[int, Mapping[str, float]], None]] = (),
    dataset_cls: type = PRMDataset,
) -> TrainResult:
    """Train a PRM (``objective.head``: prm_token, prm_head, value_head) on PRM records; resumable. Returns a :class:`TrainResult` with
    ``model_dir`` set; ``result.metrics["eval"]`` holds the held-out evaluation when run.

    - ``records``: the PRM records (:mod:`lrm_engine.train.prm_data`).
    - ``task``: gives the step tag (its step delimiter) and, for ``evaluate``, the held-out
      problems and exact labels. Without a task give ``step_tag``.
    - ``objective``: a :class:`~lrm_engine.objectives.prm.PRMObjective` (default: its defaults).
    - ``model``: ``nn.Module`` or local model folder to start from (e.g. the SFT policy); default
      a fresh tiny Llama of ``model_size`` seeded by ``model_seed``.
    - ``evaluate``: :class:`PRMEvalConfig` / dict (default settings when None and the task can
      be evaluated), or False to skip.
    - ``dataset_cls``: how records become units (:class:`PRMDataset`; the ORM's keeps only the
      final step's tag, :class:`~lrm_engine.train.orm_data.ORMDataset`).
    """
    from ..objectives.prm import PRMObjective
    run_dir = Path(run_dir)
    model_arg = model
    data_cfg = _coerce(PRMDataConfig, data)
    train_cfg = _coerce(TrainConfig, train)
    if step_tag is None:
        if task is None or not hasattr(task, "step"):
            raise ValueError("train_prm: give task= (its step delimiter is the step tag) or step_tag=")
        step_tag = task.step.delimiter
    world = join_group(train_cfg)

    extra = step_tag + (task.step.answer_prefix if task is not None and hasattr(task, "step") else "")
    with dist_.main_first():  # rank 0 writes the run's tokenizer, the others read it
        run_dir.mkdir(parents=True, exist_ok=True)
        tokenizer = _run_tokenizer(run_dir, tokenizer, model, extra)

    if objective is None:
        objective = PRMObjective()
    objective.resolve_tokens(tokenizer)
    fsdp = world > 1 and train_cfg.strategy == "fsdp"
    if fsdp:  # FSDP unshards in the root module's forward: the head read-out must go through it
        objective.full_logits = True
    dataset = dataset_cls(records, tokenizer, step_tag=step_tag, max_length=data_cfg.max_length)
    source = PRMBatchSource(dataset, train_cfg.micro_batch_size, seed=train_cfg.seed,
                            shuffle=data_cfg.shuffle)

    model = prm_model(objective, model, tokenizer, model_size=model_size, model_seed=model_seed,
                      max_length=data_cfg.max_length, quiet=not train_cfg.progress)
    if model.get_input_embeddings().weight.shape[0] < len(tokenizer):
        raise ValueError(f"the model's vocabulary ({model.get_input_embeddings().weight.shape[0]}) "
                         f"is smaller than the tokenizer's ({len(tokenizer)})")

    if dist_.is_main():
        (run_dir / "run_config.json").write_text(json.dumps({
            "objective": getattr(objective, "name", None), "task": getattr(task, "name", None),
            "model_size": model_size, "model_seed": model_seed, "data": asdict(data_cfg),
            "train": asdict(train_cfg), "num_records": len(records), "num_units": len(dataset),
            "dropped_records": dataset.dropped, "truncated_steps": dataset.truncated_steps,
            "num_steps": dataset.num_steps, "num_good_steps": dataset.num_good,
            "dataset_tokens": dataset.num_tokens, "step_tag": step_tag,
            "good_token": objective.good_token, "bad_token": objective.bad_token,
            "label_mode": objective.label_mode, "readout": getattr(objective, "readout", "tag"),
            "head": getattr(objective, "head", "prm_token"),
            "data_info": dict(data_info or {}),
        }, indent=1, default=str))

    can_eval = task is not None and all(callable(getattr(task, n, None))
                                        for n in ("noisy_solutions", "prefix_labels", "grade"))
    if evaluate is not False and can_eval:  # the held-out problems must not be trained on
        ev_cfg = PRMEvalConfig() if evaluate in (None, True) else _coerce(PRMEvalConfig, evaluate)
        held = list(itertools.islice(task.examples(ev_cfg.split), ev_cfg.num_problems))
        check_training_data("the PRM's training data", getattr(task, "name", "task"),
                            [problem_id(r.meta) for r in records], ev_cfg.split,
                            [ex.problem.id for ex in held])

    trainer = Trainer(model, objective, source, train_cfg, run_dir, tokenizer=tokenizer, callbacks=callbacks)
    result = trainer.train()
    out = run_dir / "model"
    result.model_dir = str(out)
    trainer.save_model(out)
    if not dist_.is_main():  # rank 0 alone writes the model files and evaluates
        return result
    tokenizer.save_pretrained(str(out))
    write_prm_config(out, objective, tokenizer, step_tag)
    write_trained_on(out, getattr(task, "name", None) or "unknown",
                     [problem_id(r.meta) for r in records], init=init_dir(model_arg))
    if fsdp:  # the sharded model's forward is a collective: rank 0 evaluates the saved one
        model = _run_model(str(out), tokenizer, model_size=model_size, model_seed=model_seed,
                           max_length=data_cfg.max_length, quiet=True).to(trainer.device)

    if evaluate is not False and can_eval:
        ev = evaluate_prm_on_task(model, tokenizer, task, good_token_id=objective.good_token_id,
                                  bad_token_id=objective.bad_token_id,
                                  config=None if evaluate in (None, True) else evaluate,
                                  max_length=max(512, data_cfg.max_length),
                                  readout=getattr(objective, "readout", "tag"),
                                  head=getattr(objective, "head", "prm_token"))
        ev["model_dir"] = str(out)
        ev["steps_trained"] = result.steps
        (run_dir / "eval.json").write_text(json.dumps(ev, indent=1))
        result.metrics = dict(result.metrics) | {"eval": ev}
    (run_dir / "result.json").write_text(json.dumps(result.to_json() | {"losses": result.losses[-50:]},
                                                    indent=1, default=str))
    return result
