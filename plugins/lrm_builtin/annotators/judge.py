"""`judge`: a stronger local model labels every step of policy solutions (LLM-as-a-judge).

Per problem, ``num_solutions`` solutions are sampled by the policy on the tree engine (one
probe tree for the batch). For every step i of a solution the judge gets one prompt (the
``template``: ``{question}`` = the task prompt, ``{steps}`` = steps 1..i as ``Step j: ...``
lines, ``{i}``) and its reply is parsed by :func:`lrm_engine.rewards.judge.parse_verdict`
("Step 3 is incorrect" -> wrong, "correct" -> right, the first verdict word wins). All prompts of
a batch go to the judge in one ``generate`` call.

Robust parsing: a reply with no verdict, a non-string reply, a reply list of the wrong length or
an exception from the generator never stops the run — every such step is counted
(``unparseable``, ``judge_errors``) and then either labelled ``neutral`` (a soft label, 0.5 by
default; ``unparseable=neutral``) or cut off: the record keeps the steps before the first
unparseable one (``unparseable=skip``; a record left with no step is skipped, counted).
``propagate_errors``: steps after the first wrong one are labelled wrong (prefix semantics, as
Math-Shepherd's and OmegaPRM's labels); the raw verdicts stay in ``verdicts`` (1, 0, null).

The judge needs no reference answer (problems without one are labelled too); when there is one,
``answer_correct`` records the grade of the solution. Output: TRL PRM records like mc_rollout.

The generator is any ``generate(prompts: list[str]) -> list[str]`` (Python: ``generate=``); from
the config, a local causal LM (``path``; null = the embedded default policy model) doing greedy
decoding of ``max_new_tokens`` tokens, loaded at the first batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

from lrm_engine.core.interfaces import Example

from .common import GroupedAnnotator, has_reference, probe, safe_grade, sampling_config


@dataclass
class JudgeAnnotator(GroupedAnnotator):
    """Step labels from a prompted judge model's verdicts (module docstring)."""

    # Solutions sampled per problem (each one record).
    num_solutions: int = 1
    # Judge model directory (null: the embedded default policy model).
    path: str | None = None
    # GGUF file inside `path` (null: safetensors).
    gguf_file: str | None = None
    # Judge model dtype.
    dtype: str = "float32"
    # Judge model device.
    device: str = "cpu"
    # Allow model code shipped with the checkpoint.
    trust_remote_code: bool = False
    # Tokens the judge may generate per verdict (greedy).
    max_new_tokens: int = 8
    # Longest judge prompt in tokens (longer prompts keep their end).
    max_prompt_tokens: int = 2048
    # Prompt template with {question}, {steps}, {i} (null: the judge reward's built-in one).
    template: str | None = None
    # What an unparseable verdict becomes: neutral (soft label) or skip (cut the record there).
    unparseable: str = "neutral"
    # The soft label of an unparseable verdict (unparseable=neutral).
    neutral: float = 0.5
    # Steps after the first wrong one are labelled wrong.
    propagate_errors: bool = True
    # Sampling temperature of the policy's solutions.
    temperature: float = 1.0
    # Sampling seed.
    seed: int = 0
    name: str = "judge"
    input_file: str | None = None
    # Python embedding: the judge itself, prompts -> replies (overrides path).
    generate: Callable[[list[str]], Sequence[Any]] | None = None

    output_format = "prm"
    output_file = "prm.jsonl"
    needs_reference = False

    def __post_init__(self) -> None:
        if self.unparseable not in ("neutral", "skip"):
            raise ValueError(f"annotate.unparseable must be 'neutral' or 'skip', got {self.unparseable!r}")
        if not 0.0 <= self.neutral <= 1.0:
            raise ValueError("annotate.neutral must be in [0, 1]")
        if self.num_solutions < 1:
            raise ValueError("annotate.num_solutions must be >= 1")
        from lrm_engine.rewards.judge import DEFAULT_TEMPLATE

        self._template = self.template or DEFAULT_TEMPLATE
        try:
            self._template.format(question="q", steps="", i=1)
        except (KeyError, IndexError, ValueError) as e:
            raise ValueError(f"annotate.template: bad template ({e}); fields: {{question}} "
                             f"{{steps}} {{i}}") from e

    def _generator(self):
        if self.generate is None:
            from lrm_engine.default_models import resolve_model_path
            from lrm_engine.rewards.family_factories import _lm

            lm = _lm(resolve_model_path(self.path, "policy", "annotate.path"), self.gguf_file,
                     self.dtype, self.trust_remote_code, self.device, self.max_prompt_tokens)
            self.generate = lambda prompts: lm.generate(prompts, self.max_new_tokens)
        return self.generate

    def render(self, question: str, steps: Sequence[str]) -> str:
        body = "".join(f"Step {j + 1}: {s}\n" for j, s in enumerate(steps))
        return self._template.format(question=question, steps=body, i=len(steps))

    def verdicts(self, prompts: list[str]) -> list[float | None]:
        """Parsed verdicts (1.0 / 0.0 / None) for the prompts; never raises."""
        from lrm_engine.rewards.judge import parse_verdict

        stats = self.stats
        if not prompts:
            return []
        try:
            replies = list(self._generator()(prompts))
            if len(replies) != len(prompts):
                raise ValueError(f"the judge returned {len(replies)} replies for {len(prompts)} prompts")
        except Exception as e:  # a broken judge must not stop the annotation
            stats.add("judge_errors")
            stats.setdefault("judge_error_messages", [])
            if len(stats["judge_error_messages"]) < 5:
                stats["judge_error_messages"].append(f"{type(e).__name__}: {e}")
            replies = [None] * len(prompts)
        out = []
        for r in replies:
            try:
                v = parse_verdict(r)
            except Exception:
                v = None
            stats.add("judged_steps")
            stats.add("unparseable" if v is None else ("judged_correct" if v else "judged_incorrect"))
            out.append(v)
        return out

    def annotate_batch(self, ctx, examples: Sequence[Example], grade):
        stats = self.stats
        res = probe(ctx, [(ex, ()) for ex in examples], (self.num_solutions,), None, stats,
                    sampling_config(self.temperature, self.seed))
        sols: list[list] = []
        prompts, where = [], []
        for e, (ex, cands) in enumerate(zip(examples, res)):
            rs = [r for c in cands for r in c.rollouts]
            sols.append(rs)
            q = ctx.prompt(ex.problem)
            for s, r in enumerate(rs):
                if r.empty or not r.steps:
                    stats.add("empty_solutions")
                    continue
                for i in range(len(r.steps)):
                    prompts.append(self.render(q, r.steps[: i + 1]))
                    where.append((e, s))
        verdicts = self.verdicts(prompts)
        by_sol: dict[tuple[int, int], list] = {}
        for key, v in zip(where, verdicts):
            by_sol.setdefault(key, []).append(v)
        out = []
        for e, ex in enumerate(examples):
            pid, recs = ex.problem.id, []
            for s, r in enumerate(sols[e]):
                vs = by_sol.get((e, s))
                if vs is None:
                    continue
                steps = list(r.steps)
                if self.unparseable == "skip" and None in vs:
                    cut = vs.index(None)
                    steps, vs = steps[:cut], vs[:cut]
                    if not steps:
                        stats.add("skipped_unparseable_solutions")
                        continue
                labels: list = []
                wrong = False
                for v in vs:
                    if v is None:
                        lab = 0.0 if wrong else self.neutral
                    else:
                        lab = 0.0 if (wrong or v == 0.0) else 1.0
                        wrong = wrong or (self.propagate_errors and v == 0.0)
                    labels.append(lab)
                rec = {"id": f"{pid}#{s}", "prompt": ctx.prompt(ex.problem), "completions": steps,
                       "labels": [bool(x) if x in (0.0, 1.0) else x for x in labels],
                       "soft_labels": [float(x) for x in labels], "verdicts": vs,
                       "complete": len(steps) == len(r.steps) and r.finished}
                if has_reference(ex):
                    rec["answer_correct"] = safe_grade(grade, ex, ctx.step.join_steps(r.steps), stats)
                recs.append(rec)
            out.append((pid, recs, "ok" if recs else "no_labelled_solution"))
        return out
