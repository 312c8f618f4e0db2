"""`lrm run`: the whole survey pipeline on the embedded default, stage by stage, cached.

    sft       generate (noisy) arith solutions -> train the tiny policy from scratch
    warmup    the verifier's base: a copy of the policy trained further on clean reference
              solutions (Math-Shepherd's completer, and the PRM's initialisation)
    annotate  mc_rollout (Math-Shepherd) labels of policy solutions, completed by the warmup
              model, through the tree engine
    prm       train the tiny prm_token PRM on them (initialised from the warmup model); step AUROC
    sweep     greedy, majority@N, best_of_N@N (PRM-weighted), beam@N for every N, on held-out
              problems; pass@N from the N samples (the ceiling)
    report    table on the terminal, report.md, results.jsonl, scaling.png

Each stage writes into ``<output_dir>/<run_name>/<stage>-<hash>/`` where the hash covers the
stage's own settings, the task's and the hashes of the stages it reads, and marks completion
with ``done.json``. A second `lrm run` therefore reuses every finished stage; changing a knob
reruns that stage and those after it; ``lrm run stage=<name>`` reruns one stage even if cached.
Interrupted stages resume: training from its last checkpoint, annotation and search from their
JSONL files.

The annotate and sweep stages hand their batches to the run's executor (``executor=local`` in
this process, ``executor=ray`` over Ray actors; lrm_engine/executor/): a remote worker builds the
stage's models from plain settings (:class:`StageSpec`) once, and the driver writes the JSONL.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

STAGES = ("sft", "warmup", "annotate", "prm", "sweep", "report")
SWEEP_SEARCHES = ("greedy", "majority", "best_of_n", "beam")


@dataclass
class PipelineConfig:
    """Knobs of `lrm run` (config group `pipeline`)."""

    # Name of this run: everything goes to <runtime.output_dir>/<run_name>/.
    run_name: str = "default"
    # Task split the evaluation problems come from.
    eval_split: str = "test"
    # Held-out problems searched per sweep cell.
    eval_problems: int = 100
    # Size of the policy ("micro", "tiny", "small"; see lrm_engine/models_tiny.py).
    policy_size: str = "tiny"
    # SFT examples generated from the task's train split.
    sft_examples: int = 20000
    # Share of SFT solutions with one injected wrong step (so the policy makes catchable errors).
    sft_noise: float = 0.15
    # SFT optimizer steps.
    sft_steps: int = 600
    # SFT micro-batch size.
    sft_batch: int = 32
    # SFT peak learning rate.
    sft_lr: float = 3e-3
    # Train-split problems annotated by mc_rollout.
    annotate_problems: int = 384
    # Rollouts per step prefix (N of Math-Shepherd).
    annotate_rollouts: int = 8
    # Keep the rollouts that reached the correct answer as all-good PRM records too.
    annotate_emit_rollouts: bool = True
    # Who completes the step prefixes: "warmup" (the verifier's base, Math-Shepherd's separate
    # completer) or "policy" (the policy completes its own solutions).
    annotate_completer: str = "warmup"
    # Verifier warm-up: language-model steps on the task's clean reference solutions that a
    # copy of the SFT policy takes to become the completer and the PRM's initialisation;
    # 0 = use the SFT policy itself.
    prm_warmup_steps: int = 300
    # Peak learning rate of the warm-up.
    prm_warmup_lr: float = 1e-3
    # PRM optimizer steps on the mc_rollout labels.
    prm_steps: int = 200
    # PRM micro-batch size.
    prm_batch: int = 32
    # PRM peak learning rate.
    prm_lr: float = 1e-4
    # How the PRM scores a step: "tag" (P(+) vs P(-) at the step tag, Math-Shepherd) or
    # "likelihood" (its own probability of the step's least likely token; see objectives/prm.py).
    prm_readout: str = "likelihood"
    # Held-out problems for the PRM's step-level AUROC against the task's exact labels.
    prm_eval_problems: int = 200
    # Searches of the sweep (greedy runs once, at N = 1).
    searches: list[str] = field(default_factory=lambda: list(SWEEP_SEARCHES))
    # Compute levels N of the sweep.
    sweep_n: list[int] = field(default_factory=lambda: [1, 4, 16])
    # Children per kept beam in beam search (n // beam_width beams survive).
    beam_width: int = 4
    # Step-score aggregation of the PRM along a path: min, prod, last, mean.
    aggregation: str = "min"
    # Longest step in tokens.
    max_step_tokens: int = 24
    # Most steps per solution.
    max_steps: int = 10
    # Sampling temperature of the policy in majority / best-of-N / beam / annotation.
    temperature: float = 0.7
    # Nucleus (top-p) sampling of the sweep's searches (not annotation). 0.9: bench/voting.py
    # measured majority@16 34% vs 26% at 1.0 with best_of_n@16 / beam@16 unchanged (RESULTS.md).
    sweep_top_p: float = 0.9
    # Problems per search batch (one policy call per step for the whole batch).
    search_batch: int = 32
    # Copy the trained policy and PRM to the embedded-default location (policy.path=null).
    install_defaults: bool = True


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


class Pipeline:
    """Runs the stages in order with caching; ``log`` prints progress lines."""

    def __init__(self, cfg: PipelineConfig, task: Any, task_cfg: dict, out_root: Path, *,
                 stage: str | None = None, registries: dict | None = None, ops: Any = None,
                 seed: int = 0, log: Callable[[str], None] | None = None, executor: Any = None):
        from lrm_engine.executor.local import LocalExecutor

        self.cfg = cfg
        # Runs the annotate and sweep stages' batches (lrm_engine/executor/; default: in-process).
        self.executor = executor if executor is not None else LocalExecutor()
        self.stage = stage
        self.task = task
        self.task_cfg = task_cfg
        self.root = Path(out_root) / cfg.run_name
        self.root.mkdir(parents=True, exist_ok=True)
        self.registries = registries
        self.ops = ops
        self.seed = seed
        self.log = log or (lambda m: print(m, file=sys.stderr, flush=True))
        self.hashes: dict[str, str] = {}
        self.outputs: dict[str, dict] = {}
        self.timings: dict[str, float] = {}
        # Stages (re)run in this invocation: the stages that read them rerun too.
        self.ran: set[str] = set()
        from lrm_engine.errors import UserError

        if stage is not None and stage not in STAGES:
            raise UserError(f"stage={stage!r} is not a stage of `lrm run`; stages: {', '.join(STAGES)}")
        for key, allowed in (("annotate_completer", ("warmup", "policy")), ("prm_readout", ("tag", "likelihood"))):
            if getattr(cfg, key) not in allowed:
                raise UserError(f"pipeline.{key}={getattr(cfg, key)!r} is not one of {', '.join(allowed)}")

    # ------------------------------------------------------------------ plumbing
    def _stage_settings(self, name: str) -> dict:
        c = asdict(self.cfg)
        keys = {
            "sft": ["policy_size", "sft_examples", "sft_noise", "sft_steps", "sft_batch", "sft_lr"],
            "warmup": ["prm_warmup_steps", "prm_warmup_lr", "sft_examples", "sft_batch"],
            "annotate": ["annotate_problems", "annotate_rollouts", "annotate_emit_rollouts",
                         "annotate_completer", "max_step_tokens", "max_steps", "temperature"],
            "prm": ["prm_steps", "prm_batch", "prm_lr", "prm_readout", "prm_eval_problems",
                    "max_step_tokens", "eval_split", "eval_problems"],
            "sweep": ["eval_split", "eval_problems", "searches", "sweep_n", "beam_width", "aggregation",
                      "max_step_tokens", "max_steps", "temperature", "sweep_top_p", "search_batch"],
            "report": [],
        }[name]
        return {k: c[k] for k in keys}

    def _deps(self, name: str) -> list[str]:
        return {"sft": [], "warmup": ["sft"], "annotate": ["sft", "warmup"], "prm": ["warmup", "annotate"],
                "sweep": ["sft", "prm"], "report": ["sweep", "prm"]}[name]

    def stage_dir(self, name: str) -> Path:
        h = _hash({"stage": name, "settings": self._stage_settings(name), "task": self.task_cfg,
                   "seed": self.seed, "deps": {d: self.hashes[d] for d in self._deps(name)}})
        self.hashes[name] = h
        return self.root / f"{name}-{h}"

    def _run_stage(self, name: str, fn: Callable[[Path], dict]) -> dict:
        d = self.stage_dir(name)
        done = d / "done.json"
        upstream_ran = any(dep in self.ran for dep in self._deps(name))
        if done.is_file() and self.stage != name and not upstream_ran:
            self.log(f"[lrm run] {name}: cached ({d.name})")
            out = json.loads(done.read_text())
        else:
            if done.is_file():
                if name in ("sweep", "report"):  # their per-cell files would be resumed
                    kept = _set_aside(d)
                    self.log(f"[lrm run] {name}: the previous outputs are kept in {kept}")
                else:  # training resumes from its checkpoints, annotation from its JSONL
                    done.unlink()
            d.mkdir(parents=True, exist_ok=True)
            self.log(f"[lrm run] {name}: running -> {d}")
            t0 = time.perf_counter()
            out = fn(d)
            self.ran.add(name)
            out["wall_s"] = round(time.perf_counter() - t0, 2)
            tmp = d / "done.json.tmp"
            tmp.write_text(json.dumps(out, indent=1))
            tmp.replace(done)
        self.timings[name] = out.get("wall_s", 0.0)
        self.outputs[name] = out
        return out

    def run(self) -> dict:
        t0 = time.perf_counter()
        if self.cfg.install_defaults:  # refuse a foreign install target before hours of work
            for kind, stage in INSTALLS.items():
                check_install_target(kind, self._cached_model_dir(stage))
        self._run_stage("sft", self.stage_sft)
        self._run_stage("warmup", self.stage_warmup)
        self._run_stage("annotate", self.stage_annotate)
        self._run_stage("prm", self.stage_prm)
        self._run_stage("sweep", self.stage_sweep)
        rep = self._run_stage("report", self.stage_report)
        if self.cfg.install_defaults:
            self._install_defaults()
        rep = dict(rep)
        rep["stage_wall_s"] = self.timings
        rep["total_wall_s_this_invocation"] = round(time.perf_counter() - t0, 2)
        return rep

    # ------------------------------------------------------------------ stages
    def stage_sft(self, d: Path) -> dict:
        from lrm_engine.train import train_sft

        c = self.cfg
        res = train_sft(
            d, task=self.task, model_size=c.policy_size, model_seed=self.seed,
            data=dict(num_examples=c.sft_examples, noise_fraction=c.sft_noise, noise_seed=self.seed,
                      max_length=256),
            train=dict(total_steps=c.sft_steps, micro_batch_size=c.sft_batch, lr=c.sft_lr,
                       save_every=max(50, c.sft_steps // 4), seed=self.seed, warmup_steps=min(50, c.sft_steps // 10 + 1)),
        )
        return {"model_dir": str(res.model_dir), "first_loss": res.first_loss,
                "final_loss": res.final_loss, "steps": res.steps, "tokens_per_s": res.tokens_per_s}

    def _policy(self, model_dir: str):
        return stage_policy(self.cfg, self.task, model_dir)

    def _ctx(self, policy, reward=None):
        return stage_context(self.cfg, self.task, self.ops, self.seed, policy, reward)

    def _spec(self) -> StageSpec:
        """What a remote worker needs to rebuild this run's task and contexts."""
        return StageSpec(pipeline=asdict(self.cfg), task=self.task_cfg, seed=self.seed,
                         kernels=str(getattr(self.ops, "name", "auto")) if self.ops is not None else None)

    def stage_annotate(self, d: Path) -> dict:
        from functools import partial

        from lrm_engine.core.results import ResultsFile
        from lrm_engine.executor.annotate_work import AnnotateWork, replay

        c = self.cfg
        examples = _take(self.task.examples("train"), c.annotate_problems, offset=c.sft_examples)
        sft_dir = self.outputs["sft"]["model_dir"]
        warmup_dir = None
        if c.annotate_completer == "warmup" and self.outputs["warmup"]["steps"] > 0:
            warmup_dir = self.outputs["warmup"]["model_dir"]
        out = ResultsFile(d / "prm.jsonl")
        if self.executor.remote:
            work = AnnotateWork(ResultsFile, build=partial(remote_annotate_parts, self._spec(), sft_dir, warmup_dir))
        else:
            work = AnnotateWork(ResultsFile, parts=annotate_parts(self.cfg, self.task, self.ops, self.seed,
                                                                  sft_dir, warmup_dir))
        todo = [ex for ex in examples if not out.done(ex.problem.id)]
        report = self.executor.run(work, todo, lambda res: replay(out, res.items), batch_size=c.search_batch,
                                   desc="annotate mc_rollout")
        recs = out.records()
        steps = sum(len(r["labels"]) for r in recs)
        good = sum(sum(r["labels"]) for r in recs)
        return {"data": str(d / "prm.jsonl"), "records": len(recs), "steps": steps,
                "rollout_records": sum(r.get("source") == "rollout" for r in recs),
                "good_steps": int(good), "policy_tokens": report.counters.get("policy", {}),
                "completer": "policy" if warmup_dir is None else "warmup",
                "completer_tokens": None if warmup_dir is None else report.counters.get("completer", {}),
                "executor": report.executor}

    def stage_prm(self, d: Path) -> dict:
        from lrm_engine.objectives.prm import PRMObjective
        from lrm_engine.train import load_prm_jsonl, train_prm

        c = self.cfg
        loaded = load_prm_jsonl(self.outputs["annotate"]["data"])
        records = loaded.records
        base = self.outputs["warmup"]["model_dir"]
        res = train_prm(
            d, records=records, task=self.task, model=base,
            objective=PRMObjective(readout=c.prm_readout),
            train=dict(total_steps=c.prm_steps, micro_batch_size=c.prm_batch, lr=c.prm_lr,
                       save_every=max(50, c.prm_steps // 3), seed=self.seed,
                       warmup_steps=min(30, c.prm_steps // 10 + 1)),
            evaluate=dict(num_problems=c.prm_eval_problems),
        )
        ev = (getattr(res, "metrics", None) or {}).get("eval", {})
        return {"model_dir": str(res.model_dir), "final_loss": res.final_loss,
                "step_auroc": ev.get("step_auroc"), "eval": ev, "skipped_records": loaded.skipped,
                "greedy_as_policy": self._greedy_accuracy(str(res.model_dir))}

    def stage_warmup(self, d: Path) -> dict:
        """Continue the policy's language-model training on clean reference solutions: the
        verifier's base (the completer of the annotation and the PRM's initialisation). The
        policy learned from solutions with injected errors and stopped at sft_steps; the
        verifier gets this extra, clean training. Its cost is this stage's wall time and the
        PRM's own greedy accuracy is reported, so nobody mistakes where its edge comes from."""
        from lrm_engine.train import train_sft

        c = self.cfg
        if c.prm_warmup_steps <= 0:
            return {"model_dir": self.outputs["sft"]["model_dir"], "steps": 0}
        res = train_sft(
            d, task=self.task, model=self.outputs["sft"]["model_dir"],
            data=dict(num_examples=c.sft_examples, noise_fraction=0.0, max_length=256),
            train=dict(total_steps=c.prm_warmup_steps, micro_batch_size=c.sft_batch, lr=c.prm_warmup_lr,
                       save_every=max(50, c.prm_warmup_steps // 3), seed=self.seed + 1,
                       warmup_steps=min(20, c.prm_warmup_steps // 10 + 1)),
        )
        return {"model_dir": str(res.model_dir), "steps": res.steps, "final_loss": res.final_loss}

    def _eval_examples(self) -> tuple[list, dict]:
        """The held-out problems every sweep cell searches, and them by problem id."""
        examples = _take(self.task.examples(self.cfg.eval_split), self.cfg.eval_problems)
        return examples, {ex.problem.id: ex for ex in examples}

    def _greedy_accuracy(self, model_dir: str) -> float:
        """Greedy accuracy of a model used as the policy on the sweep's problems (the PRM's
        model: how much it knows as a solver, next to what it buys as a verifier)."""
        from lrm_engine.core.engine import run_search
        from lrm_engine.core.results import ResultsFile

        c = self.cfg
        examples, by_id = self._eval_examples()
        out = Path(model_dir).parent / "greedy_as_policy.jsonl"
        out.unlink(missing_ok=True)
        recs = run_search(self._make_search("greedy", 1), self._ctx(self._policy(model_dir)),
                          [ex.problem for ex in examples], ResultsFile(out), batch_size=c.search_batch)
        return _score_cell("greedy", 1, recs, by_id, self.task)["accuracy"]

    def _make_search(self, name: str, n: int):
        return make_search(name, n, self.cfg.beam_width, self.registries)

    def stage_sweep(self, d: Path) -> dict:
        from functools import partial

        from lrm_engine.core.results import ResultsFile
        from lrm_engine.executor.search_work import SearchWork

        c = self.cfg
        examples, by_id = self._eval_examples()
        problems = [ex.problem for ex in examples]
        cells = [(s, n) for s in c.searches for n in c.sweep_n if not (s == "greedy" and n != min(c.sweep_n))]
        rows = []
        sft_dir, prm_dir = self.outputs["sft"]["model_dir"], self.outputs["prm"]["model_dir"]
        for s, n in cells:
            self.log(f"[lrm run] sweep: {s}@{n} on {len(problems)} problems")
            if self.executor.remote:
                work = SearchWork(build=partial(remote_sweep_parts, self._spec(), sft_dir, prm_dir, s, n))
            else:
                work = SearchWork(parts=sweep_parts(self.cfg, self.task, self.ops, self.seed, self.registries,
                                                    sft_dir, prm_dir, s, n))
            results = ResultsFile(d / f"{s}@{n}.jsonl")
            todo = [p for p in problems if not results.done(p.id)]
            self.executor.run(work, todo, lambda res: results.append(res.items), batch_size=c.search_batch,
                              desc=f"sweep {s}@{n}")
            recs = results.records()
            rows.append(_score_cell(s, n, recs, by_id, self.task))
            if s == "majority":
                rows.append(_pass_row(n, recs, by_id, self.task))
        (d / "rows.json").write_text(json.dumps(rows, indent=1))
        return {"rows": rows, "problems": len(problems)}

    def stage_report(self, d: Path) -> dict:
        from lrm_engine.report import findings, markdown_table, write_report

        rows = self.outputs["sweep"]["rows"]
        acc = {f"{r['search']}@{r['n']}" if r["search"] != "greedy" else "greedy": r["accuracy"] for r in rows}
        acc = {k.replace("pass@", "pass@"): v for k, v in acc.items()}
        nmax = max(self.cfg.sweep_n)
        greedy = acc.get("greedy", math.nan)
        beam = acc.get(f"beam@{nmax}", math.nan)
        ceiling = acc.get(f"pass@{nmax}", math.nan)
        gap = (beam - greedy) / (ceiling - greedy) if ceiling - greedy > 1e-9 else math.nan
        cols = ("search", "n", "accuracy", "tokens", "policy_tokens", "prm_tokens", "reused_tokens")
        prm = self.outputs.get("prm", {})
        ev = prm.get("eval") or {}
        extra = (f"PRM step-level AUROC on held-out problems (exact labels): {prm.get('step_auroc')} "
                 f"(prefix score = running min of step scores; each step's own score: "
                 f"{ev.get('step_auroc_raw')}; step position alone: {ev.get('position_baseline_auroc')}; "
                 f"steps up to the first error: {ev.get('error_step_auroc')})\n\n")
        if prm.get("greedy_as_policy") is not None:
            w = self.outputs.get("warmup") or {}
            extra += (f"The PRM's model: initialised from the policy + {w.get('steps', 0)} warm-up "
                      f"steps on clean solutions; readout: {self.cfg.prm_readout}. The PRM's model "
                      f"used as the policy (greedy): {100 * prm['greedy_as_policy']:.1f}%.\n\n")
        n_problems = int(self.outputs["sweep"]["problems"])
        found = findings(acc, n_problems, nmax, verifier_as_policy=prm.get("greedy_as_policy"),
                         step_auroc=prm.get("step_auroc"),
                         position_auroc=ev.get("position_baseline_auroc"))
        extra += "Findings (computed from the numbers above):\n\n" + "".join(f"- {f}\n" for f in found)
        title = f"Test-time scaling on {self.task_cfg.get('name', 'task')} ({self.outputs['sweep']['problems']} problems)"
        write_report(rows, d, title, extra=extra, columns=cols)
        # The run folder's top level carries the latest report, plot and results.
        for f in ("report.md", "scaling.png"):
            shutil.copy(d / f, self.root / f)
        with open(self.root / "results.jsonl", "w", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
        table = markdown_table(rows, cols)
        self.log("\n" + title + "\n" + table + "\n" + extra)
        return {"accuracy": acc, "gap_closed_beam": None if math.isnan(gap) else round(gap, 4),
                "report": str(self.root / "report.md"), "plot": str(self.root / "scaling.png"),
                "prm_step_auroc": prm.get("step_auroc"), "prm_greedy_as_policy": prm.get("greedy_as_policy")}

    def _install_defaults(self) -> None:
        """Install the trained policy and PRM where policy.path=null / reward.path=null look.

        The engine writes only folders it created (marked by INSTALL_MARKER, which names the
        stage output and lists the files): a copy under a new name, then a rename. An installed
        copy that already is this stage output is kept as it is; a target holding files the
        engine did not write is refused (check_install_target)."""
        for kind, stage in INSTALLS.items():
            src = Path(self.outputs[stage]["model_dir"])
            dst = check_install_target(kind, src)
            if dst.exists() and dst.resolve() == src.resolve():
                continue
            stamp = {"stage": self.stage_dir(stage).name,
                     "done": hashlib.sha256((self.stage_dir(stage) / "done.json").read_bytes()).hexdigest()[:16]}
            marker = _read_marker(dst)
            if marker is None and dst.is_dir() and same_files(dst, src):
                # an unmarked copy of this very output (an install of an earlier engine): mark it
                write_marker(dst, stamp, src)
                marker = _read_marker(dst)
            if marker is not None and {k: marker.get(k) for k in stamp} == stamp:
                self.log(f"[lrm run] default {kind}: {dst} already holds {stamp['stage']} (kept)")
                continue
            install_tree(src, dst, stamp)
            self.log(f"[lrm run] default {kind}: installed {stamp['stage']} at {dst}")

    def _cached_model_dir(self, stage: str) -> Path | None:
        """The model folder of a finished (cached) ``stage``, or None."""
        for name in STAGES[: STAGES.index(stage) + 1]:
            d = self.stage_dir(name)  # computes the hashes in order
        try:
            return Path(json.loads((d / "done.json").read_text())["model_dir"])
        except (OSError, ValueError, KeyError, TypeError):
            return None


# ---------------------------------------------------------------------- stage builders
# One definition of how a stage builds its models, used in-process and by remote workers.


@dataclass
class StageSpec:
    """The plain settings a remote worker rebuilds a stage's task and contexts from."""

    # asdict(PipelineConfig).
    pipeline: dict
    # The task node (plain), built through the task registry.
    task: dict
    # runtime.seed.
    seed: int
    # Name of the tree-op backend (None: the context's default).
    kernels: Optional[str] = None

    def build(self) -> tuple[PipelineConfig, Any, Any]:
        """(pipeline config, task, kernels backend) in this process."""
        from lrm_engine.components import node_to_kwargs
        from lrm_engine.plugin_manager import registries

        name, kwargs = node_to_kwargs(dict(self.task), "task")
        task = registries()["task"].create(name, **kwargs)
        ops = None
        if self.kernels is not None:
            from lrm_engine.ops import get_backend

            ops = get_backend(self.kernels, device="cpu")
        return PipelineConfig(**self.pipeline), task, ops


def stage_policy(cfg: PipelineConfig, task: Any, model_dir: str):
    from lrm_engine.models.hf_policy import HFPolicy

    return HFPolicy.from_config(model_dir, step=task.step, max_step_tokens=cfg.max_step_tokens,
                                kv_budget_mb=256)


def stage_context(cfg: PipelineConfig, task: Any, ops: Any, seed: int, policy, reward=None,
                  top_p: float = 1.0):
    from lrm_engine.core.engine import SearchContext
    from lrm_engine.models.sampling import SamplingConfig

    return SearchContext(policy=policy, reward=reward, step=task.step, prompt=task.prompt,
                         sampling=SamplingConfig(temperature=cfg.temperature, top_p=top_p, seed=seed),
                         ops=ops, aggregation=cfg.aggregation, max_steps=cfg.max_steps, seed=seed)


def make_search(name: str, n: int, beam_width: int, registries: dict | None = None):
    kw: dict[str, Any] = {}
    if name in ("majority", "best_of_n"):
        kw["n"] = n
    if name == "beam":
        kw.update(n=n, beam_width=min(beam_width, n))
    if registries is not None:
        return registries["search"].create(name, **kw)
    from lrm_builtin.search.beam import BeamSearch
    from lrm_builtin.search.greedy import GreedySearch
    from lrm_builtin.search.sampled import BestOfNSearch, MajoritySearch

    return {"greedy": GreedySearch, "majority": MajoritySearch, "best_of_n": BestOfNSearch,
            "beam": BeamSearch}[name](**kw)


def annotate_parts(cfg: PipelineConfig, task: Any, ops: Any, seed: int, sft_dir: str,
                   warmup_dir: str | None):
    """The annotate stage's mc_rollout annotator, policy context and (warmup) completer."""
    from lrm_builtin.annotators.mc_rollout import MCRolloutAnnotator
    from lrm_engine.executor.annotate_work import AnnotateParts

    ctx = stage_context(cfg, task, ops, seed, stage_policy(cfg, task, sft_dir))
    completer = None
    if warmup_dir is not None:
        completer = stage_context(cfg, task, ops, seed, stage_policy(cfg, task, warmup_dir))
    ann = MCRolloutAnnotator(num_rollouts=cfg.annotate_rollouts, temperature=cfg.temperature, seed=seed,
                             emit_rollouts=cfg.annotate_emit_rollouts)
    return AnnotateParts(annotator=ann, ctx=ctx, grade=task.grade, completer=completer)


def sweep_parts(cfg: PipelineConfig, task: Any, ops: Any, seed: int, registries: dict | None,
                sft_dir: str, prm_dir: str, search: str, n: int):
    """One sweep cell's search and context (the PRM for best_of_n and beam)."""
    from lrm_engine.executor.search_work import SearchParts
    from lrm_engine.rewards.factories import make_prm_token

    reward = make_prm_token(prm_dir, kv_budget_mb=256) if search in ("best_of_n", "beam") else None
    ctx = stage_context(cfg, task, ops, seed, stage_policy(cfg, task, sft_dir), reward, top_p=cfg.sweep_top_p)
    return SearchParts(search=make_search(search, n, cfg.beam_width, registries), ctx=ctx)


def remote_annotate_parts(spec: StageSpec, sft_dir: str, warmup_dir: str | None):
    cfg, task, ops = spec.build()
    return annotate_parts(cfg, task, ops, spec.seed, sft_dir, warmup_dir)


def remote_sweep_parts(spec: StageSpec, sft_dir: str, prm_dir: str, search: str, n: int):
    from lrm_engine.plugin_manager import registries

    cfg, task, ops = spec.build()
    return sweep_parts(cfg, task, ops, spec.seed, registries(), sft_dir, prm_dir, search, n)


# The embedded defaults `lrm run` installs: kind (lrm_engine.default_models) -> the stage whose
# model_dir it is.
INSTALLS: dict[str, str] = {"policy": "sft", "prm": "prm"}
# Written into every folder the engine installs: what it holds and which files it wrote.
INSTALL_MARKER = ".lrm_engine_created"


def _read_marker(d: Path) -> dict | None:
    try:
        doc = json.loads((d / INSTALL_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def _files(d: Path) -> list[str]:
    return sorted(p.relative_to(d).as_posix() for p in d.rglob("*") if not p.is_dir())


def foreign_files(d: Path) -> list[str]:
    """Files under ``d`` that the engine did not write there (all of them without a marker)."""
    if not d.is_dir():
        return []
    marker = _read_marker(d) or {}
    ours = set(marker.get("files") or ()) | {INSTALL_MARKER} if marker else set()
    return [f for f in _files(d) if f not in ours]


def same_files(a: Path, b: Path) -> bool:
    """Whether folders ``a`` and ``b`` hold the same files with the same bytes (the marker aside)."""
    fa, fb = [f for f in _files(a) if f != INSTALL_MARKER], [f for f in _files(b) if f != INSTALL_MARKER]
    if fa != fb:
        return False
    for f in fa:
        x, y = a / f, b / f
        if x.stat().st_size != y.stat().st_size or x.read_bytes() != y.read_bytes():
            return False
    return True


def write_marker(d: Path, stamp: dict, src: Path) -> None:
    """Mark ``d`` as the engine's: the stage output it holds and the files it wrote there."""
    files = [f for f in _files(d) if f != INSTALL_MARKER]
    tmp = d / (INSTALL_MARKER + ".tmp")
    tmp.write_text(json.dumps(dict(stamp, source=str(src), files=files), indent=1), encoding="utf-8")
    tmp.replace(d / INSTALL_MARKER)


def check_install_target(kind: str, src: Path | None = None) -> Path:
    """The install folder of the default ``kind``; UserError (one line) when it is a file or
    holds files the engine did not write (an unmarked exact copy of ``src``, this run's output,
    counts as the engine's)."""
    from lrm_engine.default_models import DEFAULTS, default_model_dir, default_model_origin
    from lrm_engine.errors import UserError

    dst = default_model_dir(kind)
    where = default_model_origin(kind)
    fix = (f"point {DEFAULTS[kind][0]} at a new or empty folder, or set "
           f"pipeline.install_defaults=false")
    if dst.exists() and not dst.is_dir():
        raise UserError(f"{where}: is a file; `lrm run` installs the default {kind} model there as a "
                        f"folder and never overwrites a file it did not create: {fix}")
    foreign = foreign_files(dst)
    if foreign and _read_marker(dst) is None and src is not None and src.is_dir() and same_files(dst, src):
        foreign = []
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise UserError(f"{where}: holds files lrm did not create ({shown}); `lrm run` installs the "
                        f"default {kind} model there and never overwrites or deletes them: {fix}")
    return dst


def install_tree(src: Path, dst: Path, stamp: dict) -> None:
    """Copy ``src`` to ``dst`` (checked: absent, empty, or the engine's own): into a new folder
    beside it, marked with INSTALL_MARKER, then renamed into place; a previous install (the
    engine's, marked) is renamed aside and removed after."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.lrm-new-{os.getpid()}")
    old = dst.with_name(f".{dst.name}.lrm-old-{os.getpid()}")
    for left in (tmp, old):  # leftovers of this engine from an interrupted install
        if left.exists() and _read_marker(left) is not None and not foreign_files(left):
            shutil.rmtree(left)
    shutil.copytree(src, tmp)
    write_marker(tmp, stamp, src)
    if dst.is_dir() and _read_marker(dst) is None:  # empty (checked): nothing to keep
        dst.rmdir()
    if dst.exists():
        dst.rename(old)
        tmp.rename(dst)
        shutil.rmtree(old)  # the engine's previous install: only files it wrote (checked)
    else:
        tmp.rename(dst)


def _set_aside(d: Path) -> Path:
    """Rename a stage folder that is rerun from scratch to ``<name>.prev-<k>`` (nothing in it is
    deleted); the new name."""
    k = 1
    while d.with_name(f"{d.name}.prev-{k}").exists():
        k += 1
    kept = d.with_name(f"{d.name}.prev-{k}")
    d.rename(kept)
    return kept


def _take(it, n: int, offset: int = 0) -> list:
    out = []
    for i, x in enumerate(it):
        if i < offset:
            continue
        out.append(x)
        if len(out) >= n:
            break
    return out


def _tokens(rec: dict) -> tuple[int, int, int]:
    c = rec.get("counters", {})
    pol = int(c.get("policy_tokens_computed", 0))
    prm = int(c.get("reward_tokens_computed", 0))
    reused = int(c.get("policy_tokens_reused", 0)) + int(c.get("reward_tokens_reused", 0))
    return pol, prm, reused


def _score_cell(search: str, n: int, recs: list[dict], by_id: dict, task) -> dict:
    correct, pol, prm, reused = 0, 0, 0, 0
    for r in recs:
        ex = by_id[r["id"]]
        correct += bool(task.grade(ex, r["solution"]))
        p, q, u = _tokens(r)
        pol, prm, reused = pol + p, prm + q, reused + u
    m = max(len(recs), 1)
    return {"search": search, "n": n, "accuracy": correct / m, "tokens": (pol + prm) / m,
            "policy_tokens": pol / m, "prm_tokens": prm / m, "reused_tokens": reused / m}


def _pass_row(n: int, recs: list[dict], by_id: dict, task) -> dict:
    hit, pol = 0, 0
    for r in recs:
        ex = by_id[r["id"]]
        hit += any(task.grade(ex, c["text"]) for c in r["candidates"])
        pol += _tokens(r)[0]
    m = max(len(recs), 1)
    return {"search": "pass", "n": n, "accuracy": hit / m, "tokens": pol / m, "policy_tokens": pol / m,
            "prm_tokens": 0.0, "reused_tokens": None}
