"""`reflexion`: Reflexion (Shinn et al. 2023), verbal reinforcement at test time.

Per problem, up to ``max_attempts`` attempts. An attempt is one solution written by the policy
from the task prompt, preceded (``attempt_template``) by the reflections in the memory. It is
judged by a test-time signal only — the reward model's score of the solution (the path aggregate
``search_run.aggregation`` of a PRM, or the last step's score of an outcome-only reward such as
the ORM); never the reference answer, which a search never sees (it gets Problems, not Examples).
An attempt scored below ``threshold`` has failed: the policy writes a reflection on it
(``reflection_template``, at most ``reflection_steps`` steps, kept on one line), the reflection
goes into the memory (the newest ``memory_size`` are kept), and the next attempt is prompted with
the memory. The answer is the first attempt that passes, else the highest-scored one.

Memory scope (``memory``):

- ``episode``: each problem starts with an empty memory. Problems are independent, so a batch's
  problems run in lock-step (each attempt / reflection round is one batched generation) and every
  draw comes from the problem's own stream: the records do not depend on the batch size.
- ``task``: reflections carry over from problem to problem in the order the run processes them
  (the dataset order). This cannot be order-independent, so problems are processed one after
  another (no batching across problems: the batch size changes nothing) and every record stores
  the memory each attempt was prompted with (``candidates[i].memory``) and the memory after the
  problem (``candidates[-1].memory_after``). On resume the memory is rebuilt from the last record
  of ``records`` (the run's results file, read for that field only), so a resumed run writes the
  same records as an uninterrupted one.

Records: ``candidates`` are the attempts in order, ``{"attempt", "answer", "score", "text",
"passed", "memory", "reflection"}``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional, Sequence

from lrm_builtin.search.chains import generate_chains
from lrm_builtin.search.errors import SettingError
from lrm_builtin.search.family_util import greedy as greedy_sampling
from lrm_engine.core.interfaces import SearchResult

REFLECTION_TEMPLATE = (
    "{prompt}{solution}\n"
    "The solution above scored {score} and was judged wrong. In one line, say what went wrong "
    "and what to do differently next time.\n"
    "Reflection: "
)
ATTEMPT_TEMPLATE = "Reflections on earlier attempts:\n{memory}\n{prompt}"
MEMORY_SCOPES = ("episode", "task")


class ReflexionSearch:
    """Reflexion: attempt, judge by the reward model, reflect in words, retry (see module doc)."""

    name = "reflexion"
    # Judges finished solutions only: outcome-only rewards (ORM) are fine.
    uses_step_scores = False

    def __init__(self, max_attempts: int = 3, threshold: float = 0.5,
                 reflection_template: Optional[str] = None, attempt_template: Optional[str] = None,
                 reflection_steps: int = 2, memory_size: int = 3, memory: str = "episode",
                 records: Optional[str] = None, greedy: bool = True, name: str = "reflexion"):
        if memory not in MEMORY_SCOPES:
            raise SettingError(f"unknown search.memory {memory!r}; choose one of: {', '.join(MEMORY_SCOPES)}")
        if max_attempts < 1 or reflection_steps < 1 or memory_size < 1:
            raise SettingError("search.max_attempts, search.reflection_steps and search.memory_size must be >= 1")
        self.max_attempts, self.threshold = max_attempts, threshold
        self.reflection_template = reflection_template or REFLECTION_TEMPLATE
        self.attempt_template = attempt_template or ATTEMPT_TEMPLATE
        for field, tpl, keys in (("reflection_template", self.reflection_template,
                                  dict(prompt="", question="", solution="", score=0.0)),
                                 ("attempt_template", self.attempt_template, dict(memory="", prompt=""))):
            try:
                tpl.format(**keys)
            except (KeyError, IndexError, ValueError) as e:
                raise SettingError(f"search.{field}: bad template ({e}); fields: "
                                 + " ".join("{" + k + "}" for k in keys)) from e
        self.reflection_steps, self.memory_size, self.memory = reflection_steps, memory_size, memory
        self.records, self.greedy = records, greedy
        # memory=task: the memory carried to the next problem (None: not rebuilt yet).
        self._carried: Optional[list[str]] = None

    # ------------------------------------------------------------------ memory=task resume
    def _rebuild(self) -> list[str]:
        """The memory after the last finished problem of ``records`` (empty without one)."""
        path = Path(self.records) if self.records else None
        mem: list[str] = []
        if path is None or not path.is_file():
            return mem
        with open(path, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue  # a torn last line: the engine drops it too
                cands = rec.get("candidates") if isinstance(rec, dict) else None
                if cands and isinstance(cands[-1], dict) and "memory_after" in cands[-1]:
                    mem = [str(x) for x in cands[-1]["memory_after"]]  # only this field is read
        return mem

    # ------------------------------------------------------------------ the search
    def run(self, ctx, problems):
        if ctx.reward is None:
            raise SettingError("search=reflexion needs a reward model to judge its attempts: set "
                               "reward=<name> (prm_token, prm_head, orm, ...)")
        if self.memory == "episode":
            return self._episodes(ctx, problems, [[] for _ in problems])
        if self._carried is None:
            self._carried = self._rebuild()
        out = []
        for p in problems:  # one after another: each problem starts from the previous memory
            (r,) = self._episodes(ctx, [p], [self._carried])
            self._carried = list(r.candidates[-1]["memory_after"])
            out.append(r)
        return out

    def _signal(self, ctx, chain) -> float:
        """The test-time judgement of one attempt: the reward model's score (never the reference)."""
        s = chain.score if getattr(ctx.reward, "scores_steps", True) else chain.last_score
        return s

    def _episodes(self, ctx, problems: Sequence, memories: list[list[str]]) -> list[SearchResult]:
        B = len(problems)
        ids = [str(p.id) for p in problems]
        base = [ctx.prompt(p) for p in problems]
        base = [b if isinstance(b, str) else p.question for b, p in zip(base, problems)]
        mem = [list(m) for m in memories]
        attempts: list[list[dict]] = [[] for _ in range(B)]
        sampling = greedy_sampling() if self.greedy else None
        active = list(range(B))
        for t in range(self.max_attempts):
            prompts = [self.attempt_template.format(memory="\n".join(mem[b]), prompt=base[b]) if mem[b]
                       else base[b] for b in active]
            chains = generate_chains(ctx, prompts, [ctx.max_steps] * len(active),
                                     [f"{ids[b]}|reflexion-attempt|{t}" for b in active],
                                     [ids[b] for b in active], score=True, sampling=sampling)
            failed = []
            for b, ch in zip(active, chains):
                s = self._signal(ctx, ch)
                passed = not math.isnan(s) and s >= self.threshold
                attempts[b].append({"attempt": t, "answer": ctx.answer(ch.text),
                                    "score": None if math.isnan(s) else s, "text": ch.text,
                                    "passed": passed, "memory": list(mem[b]), "reflection": None})
                if not passed:
                    failed.append(b)
            if t == self.max_attempts - 1 or not failed:
                break
            refl = generate_chains(
                ctx, [self.reflection_template.format(prompt=base[b], question=problems[b].question,
                                                      solution=attempts[b][-1]["text"],
                                                      score=_fmt(attempts[b][-1]["score"])) for b in failed],
                [self.reflection_steps] * len(failed), [f"{ids[b]}|reflexion-reflect|{t}" for b in failed],
                [ids[b] for b in failed], score=False, sampling=sampling)
            for b, ch in zip(failed, refl):
                line = " ".join(ch.text.split())
                attempts[b][-1]["reflection"] = line
                if line:
                    mem[b] = (mem[b] + [line])[-self.memory_size:]
            active = failed
        out = []
        for b, p in enumerate(problems):
            atts = attempts[b]
            atts[-1]["memory_after"] = list(mem[b])
            ok = [a for a in atts if a["passed"]]
            chosen = ok[0] if ok else max(atts, key=lambda a: -math.inf if a["score"] is None else a["score"])
            out.append(SearchResult(id=p.id, answer=chosen["answer"], solution=chosen["text"],
                                    score=math.nan if chosen["score"] is None else float(chosen["score"]),
                                    steps=ctx.step.split_steps(chosen["text"]), candidates=atts))
        return out


def _fmt(score: Optional[float]) -> str:
    return "unknown" if score is None else f"{score:.2f}"
