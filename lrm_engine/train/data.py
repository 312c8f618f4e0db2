"""SFT data: (prompt, completion) examples, tokenisation with completion-only labels, optional
packing, collation, and a deterministic, resumable batch order.

Order. The examples (or packed rows: "units") are visited as an endless stream of epochs; epoch
``e`` is a permutation of the units drawn from ``torch.Generator().manual_seed(seed * 1_000_003
+ e)`` (or the identity when ``shuffle=False``). Batch ``k`` is the units at stream positions
``[k * B, (k + 1) * B)`` — a pure function of the position, so the only state to checkpoint is one
integer (:meth:`SFTBatchSource.state_dict`). Resuming from a checkpoint therefore replays exactly
the batches an uninterrupted run would have seen. An epoch boundary may fall inside a batch;
every unit is seen once per epoch.

Batch sources. The loop draws micro-batches from a *batch source*: any object with
``next_batch() -> (batch, example_indices)``, ``state_dict()`` and ``load_state_dict()``.
:class:`SFTBatchSource` is the one for fixed datasets (SFT, PRM, DPO pairs); on-policy objectives
(PPO, GRPO) bring a source that generates rollouts from prompts, with the same contract (the
indices are then prompt indices).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import hashlib
import json
import logging
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Protocol, Sequence

import torch

IGNORE_INDEX = -100

log = logging.getLogger("lrm_engine.train")


@dataclass(frozen=True)
class SFTExample:
    """One supervised example: the model reads ``prompt`` and learns ``completion``."""

    prompt: str
    completion: str
    meta: Mapping[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- task -> examples


def sft_examples_from_task(task, split: str = "train", *, limit: int | None = None,
                           noise_fraction: float = 0.0, noise_seed: int = 0) -> list[SFTExample]:
    """SFT examples from a task's gold step-by-step solutions, optionally with step noise.

    Written against the Task protocol (:mod:`lrm_engine.core.interfaces`): the prompt is
    ``task.prompt(problem)``, the completion ``task.step.join_steps(steps)`` (every step followed
    by the delimiter, the answer line last). With ``noise_fraction > 0`` the task must offer
    ``noisy_solutions(split, fraction, seed, limit)`` (the ``arith`` task does: that share of
    solutions carries exactly one wrong step, later steps computed consistently from it) — the
    SFT policy then learns to make step errors that a PRM can learn to catch. ``meta`` records
    the problem id, the reference and ``error_step`` (-1 for a gold solution).
    """
    if noise_fraction > 0:
        if not hasattr(task, "noisy_solutions"):
            raise ValueError(
                f"task {getattr(task, 'name', task)!r} has no noisy_solutions(); "
                "use noise_fraction=0 or a task with a step-noise injector")
        sols = [(s.example, tuple(s.steps), s.error_step)
                for s in task.noisy_solutions(split, fraction=noise_fraction, seed=noise_seed, limit=limit)]
    else:
        sols = []
        for i, ex in enumerate(task.examples(split)):
            if limit is not None and i >= limit:
                break
            sols.append((ex, tuple(ex.solution_steps), -1))
    out = []
    for ex, steps, err in sols:
        if not steps:
            raise ValueError(f"example {ex.problem.id} has no solution steps; SFT needs them")
        out.append(SFTExample(
            prompt=task.prompt(ex.problem),
            completion=task.step.join_steps(steps),
            meta={"id": ex.problem.id, "reference": ex.reference, "error_step": err},
        ))
    return out


# --------------------------------------------------------------------------- tokenisation


def tokenize_sft(tokenizer, example: SFTExample, max_length: int, add_eos: bool = True):
    """``(input_ids, labels)`` lists: ``<bos> prompt completion <eos>``, prompt labels -100.

    Prompt and completion are encoded separately (so the boundary is exact for any tokenizer).
    Sequences longer than ``max_length`` are cut at the right; returns None when nothing of the
    completion survives the cut.
    """
    p = tokenizer.encode(example.prompt, add_special_tokens=True)
    c = tokenizer.encode(example.completion, add_special_tokens=False)
    if add_eos:
        c = c + [tokenizer.eos_token_id]
    ids = (p + c)[:max_length]
    labels = ([IGNORE_INDEX] * len(p) + c)[:max_length]
    if all(l == IGNORE_INDEX for l in labels[1:]):
        return None
    return ids, labels


@dataclass
class Unit:
    """One row of a batch: a single example, or several packed examples."""

    input_ids: list[int]
    labels: list[int]
    # Index (into the dataset's example list) of every example in this row.
    examples: list[int]
    # Position ids (restarting at 0 for each packed example); None for a single example.
    position_ids: list[int] | None = None


class SFTDataset:
    """Tokenised SFT examples grouped into units (rows), optionally packed.

    Packing (``pack=True``): examples are laid end to end, in dataset order, greedily filling rows
    of at most ``max_length`` tokens; each keeps its own labels and its position ids restart at
    0, and the collated batch carries no attention mask, so transformers builds a block-diagonal
    causal mask (packed examples never attend to each other).
    """

    def __init__(self, examples: Sequence[SFTExample], tokenizer, max_length: int = 256,
                 pack: bool = False):
        if max_length < 2:
            raise ValueError("max_length must be >= 2")
        self.examples = list(examples)
        self.max_length, self.pack = max_length, pack
        self.pad_token_id = tokenizer.pad_token_id
        if self.pad_token_id is None:
            raise ValueError("the tokenizer needs a pad token")
        toks, self.dropped = [], 0
        for i, ex in enumerate(self.examples):
            t = tokenize_sft(tokenizer, ex, max_length)
            if t is None:
                self.dropped += 1
                continue
            toks.append((i, t[0], t[1]))
        if self.dropped:
            log.warning("SFT data: %d examples dropped (prompt fills max_length=%d)", self.dropped, max_length)
        if not toks:
            raise ValueError("SFT data: no example left to train on")
        self.units: list[Unit] = []
        if not pack:
            self.units = [Unit(ids, labels, [i]) for i, ids, labels in toks]
        else:
            cur = Unit([], [], [], [])
            for i, ids, labels in toks:
                if cur.input_ids and len(cur.input_ids) + len(ids) > max_length:
                    self.units.append(cur)
                    cur = Unit([], [], [], [])
                cur.input_ids += ids
                cur.labels += labels
                cur.examples.append(i)
                cur.position_ids += list(range(len(ids)))
            if cur.input_ids:
                self.units.append(cur)
        self.num_tokens = sum(len(u.input_ids) for u in self.units)

    def __len__(self) -> int:
        return len(self.units)

    def fingerprint(self) -> str:
        """A hash of the tokenised units: a resume refuses data that changed under it."""
        h = hashlib.sha256()
        for u in self.units:
            h.update(json.dumps([u.input_ids, u.labels, u.examples]).encode())
        return h.hexdigest()[:16]


def collate_sft(units: Sequence[Unit], pad_token_id: int) -> dict[str, Any]:
    """Right-pad units into a batch dict.

    Unpacked: ``input_ids``, ``labels`` (-100 at padding), ``attention_mask``. Packed (units
    carry position ids): ``input_ids``, ``labels``, ``position_ids`` (the padding tail is one more
    segment starting at 0) and no attention mask, plus ``num_tokens`` (non-padding tokens).
    """
    T = max(len(u.input_ids) for u in units)
    B = len(units)
    ids = torch.full((B, T), pad_token_id, dtype=torch.long)
    labels = torch.full((B, T), IGNORE_INDEX, dtype=torch.long)
    packed = units[0].position_ids is not None
    if packed:
        pos = torch.zeros((B, T), dtype=torch.long)
    else:
        am = torch.zeros((B, T), dtype=torch.long)
    for b, u in enumerate(units):
        n = len(u.input_ids)
        ids[b, :n] = torch.tensor(u.input_ids)
        labels[b, :n] = torch.tensor(u.labels)
        if packed:
            pos[b, :n] = torch.tensor(u.position_ids)
            pos[b, n:] = torch.arange(T - n)
        else:
            am[b, :n] = 1
    out: dict[str, Any] = {"input_ids": ids, "labels": labels}
    if packed:
        out["position_ids"] = pos
        out["num_tokens"] = sum(len(u.input_ids) for u in units)
    else:
        out["attention_mask"] = am
    return out


# --------------------------------------------------------------------------- order and sources


class DataOrder:
    """The endless, seeded stream of unit indices (see the module docstring)."""

    def __init__(self, num_units: int, seed: int = 0, shuffle: bool = True):
        if num_units <= 0:
            raise ValueError("DataOrder needs at least one unit")
        self.n, self.seed, self.shuffle = num_units, seed, shuffle
        self._epoch, self._perm = -1, None

    def permutation(self, epoch: int) -> list[int]:
        if epoch != self._epoch:
            if self.shuffle:
                g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
                self._perm = torch.randperm(self.n, generator=g).tolist()
            else:
                self._perm = list(range(self.n))
            self._epoch = epoch
        return self._perm

    def take(self, start: int, count: int) -> list[int]:
        """Unit indices at stream positions ``[start, start + count)``."""
        out = []
        for p in range(start, start + count):
            out.append(self.permutation(p // self.n)[p % self.n])
        return out


class BatchSource(Protocol):
    """What the training loop draws micro-batches from."""

    def next_batch(self) -> tuple[Any, list[int]]:
        """The next micro-batch and the indices of the examples it holds."""
        ...

    def state_dict(self) -> dict:
        ...

    def load_state_dict(self, state: Mapping) -> None:
        ...


class DatasetBatchSource(ABC):
    """Micro-batches of ``batch_size`` units from a fixed tokenised dataset, in
    :class:`DataOrder` (see the module docstring): the base of the SFT, PRM and preference
    sources.

    A dataset has ``units``, ``pad_token_id``, ``__len__`` and ``fingerprint()``; a subclass
    says how units become a batch (:meth:`collate`) and names its data in the resume error
    (``data_name``).
    """

    # How the resume error names the data ("the <data_name> changed since the checkpoint").
    data_name = "data"

    def __init__(self, dataset, batch_size: int, seed: int = 0, shuffle: bool = True):
        if batch_size <= 0:
            raise ValueError("batch_size must be positive")
        self.dataset, self.batch_size = dataset, batch_size
        self.order = DataOrder(len(dataset), seed, shuffle)
        self.position = 0  # stream position of the next global micro-batch
        self.rank, self.world = 0, 1

    def shard(self, rank: int, world: int) -> None:
        """Data parallel: the global micro-batch is ``batch_size * world`` units (what one
        process at that batch size draws); this rank takes units ``[rank * batch_size,
        (rank + 1) * batch_size)`` of it. ``position`` stays a global stream position, so a
        checkpoint resumes on any world size with the same global micro-batch."""
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} outside world size {world}")
        self.rank, self.world = rank, world

    @abstractmethod
    def collate(self, units: list) -> tuple[Any, list[int]]:
        """The batch of these units and the indices of the examples they hold."""

    def next_batch(self):
        idx = self.order.take(self.position + self.rank * self.batch_size, self.batch_size)
        self.position += self.batch_size * self.world
        return self.collate([self.dataset.units[i] for i in idx])

    @property
    def epoch(self) -> float:
        return self.position / len(self.dataset)

    def state_dict(self) -> dict:
        return {"position": self.position, "num_units": len(self.dataset), "seed": self.order.seed,
                "shuffle": self.order.shuffle, "batch_size": self.batch_size * self.world,
                "fingerprint": self.dataset.fingerprint()}

    def load_state_dict(self, state: Mapping) -> None:
        mine = self.state_dict()
        for k in ("num_units", "seed", "shuffle", "batch_size", "fingerprint"):
            if k in state and state[k] != mine[k]:
                fix = ("micro_batch_size x number of processes must stay the same"
                       if k == "batch_size" else "use a new run_dir or the same data settings")
                raise ValueError(
                    f"cannot resume: the {self.data_name} changed since the checkpoint ({k}: "
                    f"checkpoint {state[k]!r}, now {mine[k]!r}); {fix}")
        self.position = int(state["position"])


class SFTBatchSource(DatasetBatchSource):
    """Micro-batches of ``batch_size`` units from an :class:`SFTDataset`, in :class:`DataOrder`."""

    def collate(self, units):
        batch = collate_sft(units, self.dataset.pad_token_id)
        return batch, [e for u in units for e in u.examples]


def take_examples(task, split: str, num_prompts: int | None) -> list:
    """The first ``num_prompts`` examples of ``split`` (all when None); an empty split is an error."""
    exs = []
    for i, ex in enumerate(task.examples(split)):
        if num_prompts is not None and i >= num_prompts:
            break
        exs.append(ex)
    if not exs:
        raise ValueError(f"no problems in split {split!r}")
    return exs


def verifier_rewards(task, reward_fn, exs, texts) -> tuple[list[float], list[float]]:
    """(the verifier's 1/0 per completion, that plus ``reward_fn(exs, texts)`` when given)."""
    ver = [1.0 if task.grade(ex, t) else 0.0 for ex, t in zip(exs, texts)]
    tot = list(ver)
    if reward_fn is not None:
        tot = [r + float(e) for r, e in zip(tot, reward_fn(exs, texts))]
    return ver, tot


def pad_rows(rows, masks, pad_id: int):
    """Right-padded [N, T] input_ids, attention_mask and completion_mask of token rows."""
    T, N = max(len(r) for r in rows), len(rows)
    ids = torch.full((N, T), pad_id, dtype=torch.long)
    am = torch.zeros((N, T), dtype=torch.long)
    cm = torch.zeros((N, T), dtype=torch.long)
    for n, (r, m) in enumerate(zip(rows, masks)):
        ids[n, :len(r)] = torch.tensor(r)
        am[n, :len(r)] = 1
        cm[n, :len(m)] = torch.tensor(m)
    return ids, am, cm
