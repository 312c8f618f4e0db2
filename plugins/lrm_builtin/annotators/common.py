"""Shared machinery of the tree-search annotators (``omegaprm``, ``judge``, ``pairs``, ``journey``).

- :func:`probe`: Monte-Carlo rollouts from solution *prefixes*, all prefixes of a batch in one
  fresh :class:`BatchedTree` (root = prompt + prefix, encoded once and shared by all rollouts of
  that prefix; one batched policy call per tree level). A policy expands a node once, with all
  its children, so a state that needs fresh rollouts after it was grown becomes the root of the
  next probe tree instead of being expanded twice. ``fanout=(k,)``: k rollouts;
  ``fanout=(k, n)``: k candidate next steps, each with n rollouts (sibling values).
- :class:`GroupedOutput`: the resumable writer for annotators that write any number of records
  per problem (zero included). Records go to ``<file>``; then one ledger line per finished
  problem to ``<file>.done``; both flushed and fsynced. On open, torn lines are dropped and so
  are records of problems with no ledger line (the process died between the two writes): a run
  killed at any moment and restarted holds every record exactly once.
- Robustness: :func:`read_examples_jsonl` reads problems from a JSONL file, counting malformed
  lines; :class:`Stats` counts problems without a reference, empty generations, grader errors,
  unparseable verdicts. Nothing in a batch stops the run.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch

from lrm_engine.core.interfaces import Example, Problem
from lrm_engine.core.results import BadLine, ResultsFile, scan_jsonl, set_aside
from lrm_engine.core.tree import BatchedTree

log = logging.getLogger("lrm_engine.annotate")


# --------------------------------------------------------------------------- counters


class Stats(dict):
    """Named counters (problems, records, rollouts, skipped_* ...); missing keys read as 0."""

    def __missing__(self, key):
        return 0

    def add(self, key: str, n: int = 1) -> None:
        self[key] = self[key] + n


def has_reference(ex: Example) -> bool:
    ref = getattr(ex, "reference", None)
    return isinstance(ref, str) and bool(ref.strip())


def safe_grade(grade: Callable, ex: Example, text: str, stats: Stats) -> bool:
    """``grade(ex, text)``; an exception from the grader counts as wrong (``grade_errors``)."""
    try:
        return bool(grade(ex, text))
    except Exception:  # a grader choking on odd model output must not stop annotation
        stats.add("grade_errors")
        return False


# --------------------------------------------------------------------------- input files


def read_examples_jsonl(path: str | os.PathLike[str], stats: Stats | None = None
                        ) -> tuple[list[Example], list[str]]:
    """Problems from a JSONL file: ``{"id", "question", "reference"?, "solution_steps"?}`` per line.

    ``id`` defaults to the line number; ``answer`` is accepted for ``reference``. Malformed
    lines (not UTF-8, bad JSON, no question, duplicate id) are skipped and reported as ``file:line: reason``
    (also counted in ``stats["malformed_input"]``); blank lines are ignored.
    """
    from lrm_engine.textlines import read_lines

    stats = stats if stats is not None else Stats()
    out, errors, seen = [], [], set()
    for lineno, line, undecodable in read_lines(path):
        if line is not None and not line.strip():
            continue
        reason = undecodable
        if reason is None:
            try:
                obj = json.loads(line)
            except ValueError as e:
                reason = f"invalid JSON ({e})"
        if reason is None:
            if not isinstance(obj, dict):
                reason = f"expected a JSON object, got {type(obj).__name__}"
            elif not isinstance(obj.get("question"), str) or not obj["question"].strip():
                reason = "no 'question' string"
            else:
                pid = str(obj.get("id", f"line{lineno}"))
                ref = obj.get("reference", obj.get("answer"))
                steps = obj.get("solution_steps") or ()
                if pid in seen:
                    reason = f"duplicate id {pid!r}"
                elif ref is not None and not isinstance(ref, (str, int, float)):
                    reason = f"'reference' must be a string, got {type(ref).__name__}"
                elif not isinstance(steps, (list, tuple)) or not all(isinstance(s, str) for s in steps):
                    reason = "'solution_steps' must be a list of strings"
                else:
                    seen.add(pid)
                    out.append(Example(Problem(pid, obj["question"]),
                                       "" if ref is None else str(ref), tuple(steps)))
                    continue
        errors.append(f"{path}:{lineno}: {reason}")
        stats.add("malformed_input")
    for e in errors[:20]:
        log.warning("annotate input: skipped malformed line: %s", e)
    return out, errors


# --------------------------------------------------------------------------- output


class GroupedOutput:
    """Records of many problems, any number per problem, written resumably (module docstring).

    Every record carries ``id`` (unique) and ``problem_id``. The ledger ``<file>.done`` holds
    ``{"id": problem_id, "records": n, "status": "ok" | <why nothing>}`` per finished problem.
    """

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.ledger = ResultsFile(self.path.with_name(self.path.name + ".done"))
        self._records: dict[str, dict[str, Any]] = {}
        self.dropped_on_open = 0
        if self.path.exists():
            self._load()

    def _load(self) -> None:
        """Keep the records of finished problems; lines that are not records go to ``.bad``
        (lrm_engine/core/results.py); records of a problem the ledger does not list as finished
        are dropped (it is annotated again, drawing the same samples)."""
        scan = scan_jsonl(self.path)
        keep = []
        for rec, line, no in zip(scan.records, scan.lines, scan.linenos):
            if "problem_id" not in rec:
                scan.bad.append(BadLine(no, line.rstrip(b"\n"), 'no "problem_id"'))
                continue
            if not self.ledger.done(str(rec["problem_id"])):
                self.dropped_on_open += 1  # its problem never finished
                continue
            self._records[str(rec["id"])] = rec
            keep.append(line)
        self.dropped_on_open += len(scan.bad) + (scan.torn is not None)
        set_aside(self.path, scan, keep)

    def done(self, problem_id: str) -> bool:
        return self.ledger.done(problem_id)

    def records(self) -> list[dict[str, Any]]:
        return list(self._records.values())

    def problems(self) -> list[dict[str, Any]]:
        """The ledger entries (one per finished problem)."""
        return self.ledger.records()

    def commit(self, finished: Iterable[tuple[str, list[dict[str, Any]], str]]) -> None:
        """Write the records of finished problems, then their ledger lines (both fsynced)."""
        lines, ledger = [], []
        for pid, recs, status in finished:
            pid = str(pid)
            if self.ledger.done(pid):
                continue
            for rec in recs:
                rec = {**rec, "problem_id": pid}
                key = str(rec["id"])
                if key in self._records:
                    raise ValueError(f"annotator produced the record id {key!r} twice")
                self._records[key] = rec
                lines.append(json.dumps(rec, ensure_ascii=False) + "\n")
            ledger.append({"id": pid, "records": len(recs), "status": status})
        if lines:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write("".join(lines))
                f.flush()
                os.fsync(f.fileno())
        self.ledger.append(ledger)


# --------------------------------------------------------------------------- rollouts


@dataclass
class Rollout:
    """One completion drawn from a probed prefix."""

    # The steps after the prefix (the candidate step first), delimiters stripped.
    steps: tuple[str, ...]
    # Graded against the reference (prefix + steps).
    correct: bool
    # Some step of it is empty / whitespace (an empty generation).
    empty: bool = False
    # Ended with a final answer / EOS (False: cut at max_steps).
    finished: bool = True


@dataclass
class Candidate:
    """A first step drawn under a probed prefix, with the rollouts that start with it."""

    step: str
    rollouts: list[Rollout] = field(default_factory=list)

    @property
    def terminal(self) -> bool:
        """The step itself ends the solution (every rollout is just this step)."""
        return bool(self.rollouts) and all(len(r.steps) == 1 and r.finished for r in self.rollouts)

    @property
    def mc(self) -> float:
        return sum(r.correct for r in self.rollouts) / len(self.rollouts) if self.rollouts else math.nan


def mc_value(cands: Sequence[Candidate]) -> tuple[int, int]:
    """(correct, total) over every rollout of the candidates."""
    rs = [r for c in cands for r in c.rollouts]
    return sum(r.correct for r in rs), len(rs)


def _node_steps(ctx, tree: BatchedTree, b: int, n: int, cache: dict) -> list[str]:
    path = tree.path_to_root(b, n)[::-1]  # root .. n
    texts = []
    for m in path[1:]:
        key = (b, m)
        if key not in cache:
            cache[key] = ctx.text(tree, b, m)
        texts.append(cache[key])
    steps, prev = [], ""
    for t in texts:
        s = t[len(prev):] if t.startswith(prev) else t
        steps.append(s.rstrip(ctx.step.delimiter).strip("\r"))
        prev = t
    return steps


def probe(ctx, jobs: Sequence[tuple[Example, tuple[str, ...]]], fanout: Sequence[int], grade,
          stats: Stats, sampling=None) -> list[list[Candidate]]:
    """Rollouts from every ``(example, prefix steps)`` job; per job its candidates.

    ``fanout=(k,)``: the prefix gets k children, each grown to the end (k rollouts, one per
    candidate). ``fanout=(k, n)``: k candidate steps, each with n rollouts (``grade=None``: not graded). One fresh tree for all
    jobs; one policy call per level for all of them. A job whose prefix already uses
    ``ctx.max_steps`` steps gets no candidates.
    """
    if not jobs:
        return []
    B = len(jobs)
    prompts = []
    for ex, prefix in jobs:
        p = ctx.prompt(ex.problem)
        if not isinstance(p, str):
            raise TypeError(f"annotators need text prompts; the task's prompt is {type(p).__name__}")
        prompts.append(p + ctx.step.join_steps(prefix))
    limit = torch.tensor([ctx.max_steps - len(pr) for _, pr in jobs], dtype=torch.int32)
    A = max(fanout)
    width = math.prod(fanout)
    cap = 2 + sum(math.prod(fanout[: i + 1]) for i in range(len(fanout))) + width * ctx.max_steps
    tree = BatchedTree.empty(B, cap, A)
    # Each job's sampling stream: its problem and its prefix (independent of the batch).
    ctx.start_tree(tree, [f"{ex.problem.id}|{len(prefix)}|{ctx.step.join_steps(prefix)}"
                          for ex, prefix in jobs], count=False)
    ctx.policy.init_roots(tree, prompts)
    ctx.ops.backup(tree, torch.zeros((B, 1), dtype=torch.int32), torch.zeros((B, 1)), None, 1.0)
    ar = torch.arange(B)
    # lanes[b]: [candidate index, current node]
    lanes: list[list[list[int]]] = [[] for _ in range(B)]
    frontier = [[BatchedTree.ROOT] if int(limit[b]) > 0 else [] for b in range(B)]
    owner: list[dict[int, int]] = [{} for _ in range(B)]  # node -> candidate index
    cand_nodes: list[list[int]] = [[] for _ in range(B)]
    for level, k in enumerate(fanout):
        M = max((len(f) for f in frontier), default=0)
        if M == 0:
            break
        nodes = torch.full((B, M), -1, dtype=torch.int32)
        for b, f in enumerate(frontier):
            for j, n in enumerate(f):
                if not bool(tree.terminal[b, n]) and int(tree.depth[b, n]) < int(limit[b]):
                    nodes[b, j] = n
        if not bool((nodes >= 0).any()):
            break
        exp = ctx.expand(tree, nodes, k, sampling, score=False)
        new_frontier: list[list[int]] = [[] for _ in range(B)]
        for b in range(B):
            for j, n in enumerate(frontier[b]):
                kids = [int(c) for c in exp.children[b, j].tolist() if int(c) >= 0] if nodes[b, j] >= 0 else []
                if level == 0:
                    for c in kids:
                        owner[b][c] = len(cand_nodes[b])
                        cand_nodes[b].append(c)
                else:
                    for c in kids:
                        owner[b][c] = owner[b][n]
                    if not kids and n != BatchedTree.ROOT:  # terminal (or cut) candidate: its own rollout
                        lanes[b].append([owner[b][n], n])
                new_frontier[b].extend(kids)
        frontier = new_frontier
    for b in range(B):
        for n in frontier[b]:
            lanes[b].append([owner[b][n], n])
    # Grow every lane to a final answer or the step limit, one policy call per level.
    for _ in range(ctx.max_steps + 1):
        M = max((len(x) for x in lanes), default=0)
        if M == 0:
            break
        nodes = torch.full((B, M), -1, dtype=torch.int32)
        for b in range(B):
            for j, (_, n) in enumerate(lanes[b]):
                if not bool(tree.terminal[b, n]) and int(tree.depth[b, n]) < int(limit[b]):
                    nodes[b, j] = n
        if not bool((nodes >= 0).any()):
            break
        exp = ctx.expand(tree, nodes, 1, sampling, score=False)
        for b, j in (nodes >= 0).nonzero().tolist():
            c = int(exp.children[b, j, 0])
            if c >= 0:
                lanes[b][j][1] = c
            else:  # the policy made no child: the lane ends here
                tree.terminal[b, lanes[b][j][1]] = True
    out: list[list[Candidate]] = []
    cache: dict = {}
    for b, (ex, prefix) in enumerate(jobs):
        cands = [Candidate(step=_node_steps(ctx, tree, b, c, cache)[-1]) for c in cand_nodes[b]]
        for ci, leaf in lanes[b]:
            steps = tuple(_node_steps(ctx, tree, b, leaf, cache))
            empty = any(not s.strip() for s in steps)
            text = ctx.step.join_steps(tuple(prefix) + steps)
            ok = safe_grade(grade, ex, text, stats) if grade is not None else False
            cands[ci].rollouts.append(Rollout(steps, ok, empty, bool(tree.terminal[b, leaf])))
            stats.add("rollouts")
            if empty:
                stats.add("empty_rollouts")
        out.append(cands)
    del ar
    ctx.policy.release(tree)
    return out


def sampling_config(temperature: float, seed: int):
    from lrm_engine.models.sampling import SamplingConfig

    return SamplingConfig(temperature=temperature, seed=seed)


# --------------------------------------------------------------------------- the driver


class GroupedAnnotator:
    """Base of annotators writing through :class:`GroupedOutput` (any number of records per problem).

    Subclasses set ``output_format`` (prm | dpo | sft), ``output_file``, ``needs_reference`` and
    implement ``annotate_batch(ctx, examples, grade) -> list[(problem_id, records, status)]``.
    """

    output_format = "prm"
    output_file = "prm.jsonl"
    needs_reference = True
    name = "annotator"

    def _stats(self) -> Stats:
        st = getattr(self, "_stats_obj", None)
        if st is None:
            st = Stats()
            self._stats_obj = st
        return st

    @property
    def stats(self) -> Stats:
        return self._stats()

    def read_input(self) -> tuple[list[Example], list[str]]:
        """Problems from ``self.input_file`` (malformed lines counted in ``stats``)."""
        return read_examples_jsonl(self.input_file, self.stats)

    def open_output(self, out_dir: str | os.PathLike[str]) -> GroupedOutput:
        return GroupedOutput(Path(out_dir) / self.output_file)

    def annotate(self, ctx, examples: Sequence[Example], grade, out: GroupedOutput,
                 batch_size: int = 16, progress: bool = True) -> list[dict]:
        """Annotate every problem not yet in ``out``'s ledger, committing batch by batch."""
        stats = self._stats()
        if not isinstance(out, GroupedOutput):
            raise TypeError(f"{self.name} writes through GroupedOutput (annotator.open_output(dir)), "
                            f"got {type(out).__name__}")
        todo = []
        for ex in examples:
            if out.done(ex.problem.id):
                continue
            if self.needs_reference and not has_reference(ex):
                stats.add("skipped_no_reference")
                out.commit([(ex.problem.id, [], "no_reference")])
                continue
            todo.append(ex)
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(todo), desc=f"annotate {self.name}", unit="problem", leave=False)
        for i in range(0, len(todo), batch_size):
            batch = todo[i: i + batch_size]
            finished = self.annotate_batch(ctx, batch, grade)
            for _, recs, status in finished:
                stats.add("problems")
                stats.add("records", len(recs))
                if status != "ok":
                    stats.add(f"skipped_{status}")
            out.commit(finished)
            if bar is not None:
                bar.update(len(batch))
        if bar is not None:
            bar.close()
        return out.records()
