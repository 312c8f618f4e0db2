"""`journey` (O1-Journey, "journey learning"): long SFT trajectories that take a wrong turn,
reflect on it, backtrack and finish correctly — built from a Monte-Carlo search tree.

The tree is the one ``pairs`` searches (:func:`~lrm_builtin.annotators.pairs.explore`): at every
searched node, sibling next steps valued by rollouts. At a node with a *wrong* sibling w (MC value
<= ``wrong_threshold``, i.e. no rollout from it reached the reference) and a *right* sibling g
with a correct rollout, the trajectory is

    prefix steps, w, up to ``wrong_steps`` further steps of a rollout from w (never its final
    answer), a reflection line (``reflection`` template), then g and the rest of g's correct
    rollout, ending in the right final answer.

The reflection template may use ``{step}`` (the wrong step's text), ``{k}`` (its step number,
1-based), ``{n}`` (rollouts tried from it), ``{back}`` (the step number to go back to, 0 = the
start) and ``{mc}`` (the wrong step's MC value). Steps are joined with the task's delimiter; the
reflection is one step. A trajectory whose text does not grade correct is dropped (counted).

Generated reflections (``reflector``): null keeps the template (the default; works with any
model, the tiny embedded ones included). ``policy`` has the annotating policy write the line,
a model folder has that model (a stronger one, ``policy=tree`` architecture) write it: prompted
with ``reflector_prompt`` (fields ``{prompt}`` ``{prefix}`` (the steps before the wrong one)
``{step}`` ``{tail}`` (the wrong step's continuation kept) and the template's ``{k} {n} {back}
{mc}``), it writes one step, which becomes the reflection line as written (on one line). All
reflections of a batch are one batched generation. The prompt holds what the trajectory holds,
never the reference. A model that writes nothing gets the template line instead (counted as
``reflections_fallback``); ``reflections_generated`` counts the others. Records carry
``reflection_source``: ``template`` or ``model``.

Records (``journey.jsonl``, SFT, loaded back by :func:`lrm_engine.train.sft_data.load_sft_jsonl`):
``{"id", "prompt", "completion", "wrong_step", "backtrack_to", "depth"}``; at most
``max_journeys`` per problem, one per searched node (deepest node first).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from lrm_engine.core.interfaces import Example

from lrm_builtin.search.errors import SettingError

from .common import GroupedAnnotator, safe_grade, sampling_config
from .pairs import explore

DEFAULT_REFLECTOR_PROMPT = ("{prompt}{prefix}{step}\n{tail}"
                            "Step {k} above leads nowhere: none of the {n} ways tried from it reaches a "
                            "correct answer. In one line, say why and what to do instead.\n")
DEFAULT_REFLECTION = ("Wait, step {k} is wrong because none of the {n} ways I tried to continue "
                      "from \"{step}\" reaches a correct answer. Let me go back to step {back} and "
                      "try a different step.")


def _one_line(text: str, delimiter: str) -> str:
    return " ".join(text.replace(delimiter, " ").split())


@dataclass
class JourneyAnnotator(GroupedAnnotator):
    """Journey-learning SFT data: wrong branch, reflection, backtrack, correct branch."""

    # Sibling next steps drawn at every searched node.
    num_candidates: int = 4
    # Rollouts per sibling (its MC value).
    num_rollouts: int = 4
    # Levels searched down the best branch.
    max_depth: int = 4
    # A sibling with MC value <= this is a wrong turn.
    wrong_threshold: float = 0.0
    # Steps of the wrong branch kept after the wrong step (before reflecting).
    wrong_steps: int = 1
    # Most trajectories per problem (one per searched node).
    max_journeys: int = 1
    # Reflection line template (null: the built-in one); fields {step} {k} {n} {back} {mc}.
    reflection: str | None = None
    # Who writes the reflection: null (the template), policy (the annotating policy) or a model
    # folder (that model); a Policy object in the Python embedding.
    reflector: object = None
    # Prompt of a generated reflection (null: the built-in one); fields {prompt} {prefix} {step}
    # {tail} {k} {n} {back} {mc}.
    reflector_prompt: str | None = None
    # Sampling temperature of the candidates and rollouts.
    temperature: float = 1.0
    # Sampling seed.
    seed: int = 0
    name: str = "journey"
    input_file: str | None = None

    output_format = "sft"
    output_file = "journey.jsonl"
    needs_reference = True

    def __post_init__(self) -> None:
        if self.num_candidates < 2:
            raise ValueError("annotate.num_candidates must be >= 2 (a journey needs siblings)")
        if self.num_rollouts < 1:
            raise ValueError("annotate.num_rollouts must be >= 1")
        template = self.reflection or DEFAULT_REFLECTION
        try:
            template.format(step="s", k=1, n=1, back=0, mc=0.0)
        except (KeyError, IndexError, ValueError) as e:
            raise ValueError(f"annotate.reflection: bad template ({e}); fields: "
                             f"{{step}} {{k}} {{n}} {{back}} {{mc}}") from e
        self._template = template
        self._reflector_prompt = self.reflector_prompt or DEFAULT_REFLECTOR_PROMPT
        try:
            self._reflector_prompt.format(prompt="", prefix="", step="s", tail="", k=1, n=1, back=0, mc=0.0)
        except (KeyError, IndexError, ValueError) as e:
            raise SettingError(f"annotate.reflector_prompt: bad template ({e}); fields: {{prompt}} {{prefix}} "
                             f"{{step}} {{tail}} {{k}} {{n}} {{back}} {{mc}}") from e
        self._reflector_policy = None

    def _reflector_ctx(self, ctx):
        """The context whose policy writes reflections (None: the template)."""
        r = self.reflector
        if r is None:
            return None
        if r == "policy":
            return ctx
        if self._reflector_policy is None:
            if isinstance(r, str):
                from lrm_builtin.policies import make_tree_policy

                r = make_tree_policy(path=r)
            if callable(getattr(r, "configure", None)):
                r.configure(step=ctx.step)
            self._reflector_policy = r
        import dataclasses

        return dataclasses.replace(ctx, policy=self._reflector_policy, reward=None)

    def journey(self, ctx, lvl) -> dict | None:
        """The trajectory at one searched node, or None when it has no wrong + right siblings."""
        d = ctx.step.delimiter
        wrong = [c for c in lvl.candidates if c.rollouts and c.step.strip()
                 and c.mc <= self.wrong_threshold]
        right = []
        for c in lvl.candidates:
            if not c.step.strip() or c.mc <= self.wrong_threshold:
                continue
            for r in c.rollouts:
                if r.correct and r.finished and not r.empty:
                    right.append((c, r))
                    break
        if not wrong or not right:
            return None
        w = wrong[0]
        g, good = max(right, key=lambda cr: cr[0].mc)
        tail: list[str] = []
        for r in w.rollouts:
            if not r.empty:
                cont = list(r.steps[1:-1] if r.finished else r.steps[1:])  # never its final answer
                tail = cont[: self.wrong_steps]
                break
        k = len(lvl.prefix) + 1
        fields = dict(step=_one_line(w.step, d), k=k, n=len(w.rollouts), back=len(lvl.prefix),
                      mc=round(w.mc, 3))
        refl = self._template.format(**fields)
        at = len(lvl.prefix) + 1 + len(tail)
        steps = list(lvl.prefix) + [w.step] + tail + [_one_line(refl, d)] + list(good.steps)
        fields.update(prefix=ctx.step.join_steps(lvl.prefix), tail=ctx.step.join_steps(tail))
        return {"steps": steps, "wrong_step": len(lvl.prefix), "backtrack_to": len(lvl.prefix),
                "depth": len(lvl.prefix), "_at": at, "_fields": fields}

    def _reflect(self, ctx, found: list[tuple[str, str, dict]]) -> None:
        """Replace the template lines of ``found`` [(problem id, prompt, journey)] by reflections
        the reflector writes (one batched generation); no reflector: keep the template."""
        rctx = self._reflector_ctx(ctx)
        for _, _, j in found:
            j["reflection_source"] = "template"
        if rctx is None or not found:
            return
        from lrm_builtin.search.chains import generate_chains

        asks = [self._reflector_prompt.format(prompt=prompt, **j["_fields"]) for _, prompt, j in found]
        chains = generate_chains(rctx, asks, [1] * len(found),
                                 [f"{pid}|journey-reflect|{j['depth']}" for pid, _, j in found],
                                 [pid for pid, _, _ in found],
                                 sampling=sampling_config(self.temperature, self.seed))
        for (_, _, j), ch in zip(found, chains):
            line = _one_line(ch.text, ctx.step.delimiter)
            if line:
                j["steps"][j["_at"]] = line
                j["reflection_source"] = "model"
                self.stats.add("reflections_generated")
            else:
                self.stats.add("reflections_fallback")

    def annotate_batch(self, ctx, examples: Sequence[Example], grade):
        stats = self.stats
        trees = explore(ctx, examples, grade, stats, num_candidates=self.num_candidates,
                        num_rollouts=self.num_rollouts, max_depth=self.max_depth,
                        sampling=sampling_config(self.temperature, self.seed))
        picked = []  # per example: its journeys that grade correct, deepest first
        for ex, levels in zip(examples, trees):
            prompt = ctx.prompt(ex.problem)
            js = []
            for lvl in reversed(levels):
                if len(js) >= self.max_journeys:
                    break
                j = self.journey(ctx, lvl)
                if j is None:
                    continue
                if not safe_grade(grade, ex, ctx.step.join_steps(j["steps"]), stats):
                    stats.add("journey_not_correct")
                    continue
                js.append(j)
            picked.append((ex, prompt, js))
        self._reflect(ctx, [(str(ex.problem.id), prompt if isinstance(prompt, str) else ex.problem.question, j)
                            for ex, prompt, js in picked for j in js])
        out = []
        for ex, prompt, js in picked:
            pid = ex.problem.id
            recs = []
            for j in js:
                j.pop("_at"), j.pop("_fields")
                completion = ctx.step.join_steps(j.pop("steps"))
                # A generated line could in principle break the grade (it is re-checked).
                if j["reflection_source"] == "model" and not safe_grade(grade, ex, completion, stats):
                    stats.add("journey_not_correct")
                    continue
                recs.append({"id": f"{pid}#j{len(recs)}", "prompt": prompt,
                             "completion": completion, **j})
            stats.add("journeys", len(recs))
            out.append((pid, recs, "ok" if recs else "no_wrong_and_right_sibling"))
        return out
