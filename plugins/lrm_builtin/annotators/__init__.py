"""Built-in annotator plugins: mc_rollout (Math-Shepherd Monte-Carlo process labels), omegaprm
(binary-search MC), judge (LLM-as-a-judge step labels), pairs (DPO pairs), journey (SFT)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from lrm_engine.hookspecs import hookimpl


@dataclass
class MCRolloutConfig:
    # Registry name of the annotator.
    name: str = "mc_rollout"
    # Completions drawn from every step prefix (N); soft label = fraction correct.
    num_rollouts: int = 4
    # Sampling temperature of the labelled solution and of the rollouts.
    temperature: float = 1.0
    # Sampling seed.
    seed: int = 0
    # Also write each distinct rollout that reached the correct answer as an all-good record
    # (Math-Shepherd's hard estimate of its steps; id <problem id>#r<k>).
    emit_rollouts: bool = False
    # Local model folder of a separate completer that draws the N completions (Math-Shepherd's
    # setup; same tokenizer and step convention as the policy); null = the policy itself.
    completer: Optional[str] = None


@dataclass
class OmegaPRMConfig:
    # Registry name of the annotator.
    name: str = "omegaprm"
    # Rollouts per probed state (k); MC(s) = share of them reaching the reference answer.
    num_rollouts: int = 8
    # Binary searches per problem (each labels one wrong solution up to its first error).
    max_searches: int = 2
    # Selection heuristic Q(s, r) = alpha^(1 - MC(s)) * beta^(len(r) / L).
    alpha: float = 0.5
    # See alpha.
    beta: float = 0.9
    # L of the heuristic: rollout length normaliser, in characters.
    length_scale: float = 500.0
    # Exploration constant of U(s) = c_puct * sqrt(sum N) / (1 + N(s)).
    c_puct: float = 0.125
    # Keep steps 0..first error only (as the paper); false labels every step of the solution.
    truncate_at_error: bool = False
    # Also write one all-correct solution per problem when a correct rollout was drawn.
    include_correct: bool = True
    # Sampling temperature of the rollouts.
    temperature: float = 1.0
    # Sampling seed.
    seed: int = 0
    # Problems from this JSONL file ({"id", "question", "reference"}) instead of the task split.
    input_file: Optional[str] = None


@dataclass
class JudgeAnnotateConfig:
    # Registry name of the annotator.
    name: str = "judge"
    # Policy solutions sampled per problem (one record each).
    num_solutions: int = 1
    # Judge model directory (null: the embedded default policy model).
    path: Optional[str] = None
    # GGUF file inside `path` (null: safetensors).
    gguf_file: Optional[str] = None
    # Judge model dtype: float32, bfloat16 or float16.
    dtype: str = "float32"
    # Judge model device: cpu or cuda.
    device: str = "cpu"
    # Allow model code shipped with the checkpoint (off unless you trust it).
    trust_remote_code: bool = False
    # Tokens the judge may generate per verdict (greedy).
    max_new_tokens: int = 8
    # Longest judge prompt in tokens (longer prompts keep their end).
    max_prompt_tokens: int = 2048
    # Prompt template with {question}, {steps} and {i} (null: the built-in one).
    template: Optional[str] = None
    # An unparseable verdict: neutral (soft label `neutral`) or skip (cut the record there).
    unparseable: str = "neutral"
    # Soft label of an unparseable verdict.
    neutral: float = 0.5
    # Steps after the first wrong one are labelled wrong (prefix semantics).
    propagate_errors: bool = True
    # Sampling temperature of the policy's solutions.
    temperature: float = 1.0
    # Sampling seed.
    seed: int = 0
    # Problems from this JSONL file instead of the task split (a reference is optional here).
    input_file: Optional[str] = None


@dataclass
class PairsConfig:
    # Registry name of the annotator.
    name: str = "pairs"
    # Sibling next steps drawn at every searched node.
    num_candidates: int = 4
    # Rollouts per sibling (its MC value).
    num_rollouts: int = 4
    # Levels searched down the best branch.
    max_depth: int = 4
    # A step pair needs score_chosen - score_rejected > margin.
    margin: float = 0.3
    # Most step pairs per node (largest value gaps first).
    max_pairs_per_node: int = 2
    # Most correct-vs-incorrect solution pairs per problem (0: none).
    max_solution_pairs: int = 2
    # Fold the prefix into `prompt` (plain TRL DPO) instead of a separate `prefix` (Step-DPO).
    prefix_in_prompt: bool = False
    # Sampling temperature of the candidates and rollouts.
    temperature: float = 1.0
    # Sampling seed.
    seed: int = 0
    # Problems from this JSONL file ({"id", "question", "reference"}) instead of the task split.
    input_file: Optional[str] = None


@dataclass
class JourneyConfig:
    # Registry name of the annotator.
    name: str = "journey"
    # Sibling next steps drawn at every searched node.
    num_candidates: int = 4
    # Rollouts per sibling (its MC value).
    num_rollouts: int = 4
    # Levels searched down the best branch.
    max_depth: int = 4
    # A sibling whose MC value is <= this is a wrong turn.
    wrong_threshold: float = 0.0
    # Steps of the wrong branch kept after the wrong step, before the reflection.
    wrong_steps: int = 1
    # Most trajectories per problem (one per searched node, deepest first).
    max_journeys: int = 1
    # Reflection template (null: the built-in one); fields {step} {k} {n} {back} {mc}.
    reflection: Optional[str] = None
    # Who writes the reflection line: null (the template), policy (the annotating policy) or a
    # model folder (that model, e.g. a stronger one; policy=tree architecture).
    reflector: Optional[str] = None
    # Prompt of a generated reflection (null: the built-in one); fields {prompt} {prefix} {step}
    # {tail} {k} {n} {back} {mc}.
    reflector_prompt: Optional[str] = None
    # Sampling temperature of the candidates and rollouts.
    temperature: float = 1.0
    # Sampling seed.
    seed: int = 0
    # Problems from this JSONL file ({"id", "question", "reference"}) instead of the task split.
    input_file: Optional[str] = None


@hookimpl
def lrm_register_annotators(registry):
    from lrm_builtin.annotators.mc_rollout import MCRolloutAnnotator

    registry.register("mc_rollout", MCRolloutAnnotator,
                      description="Math-Shepherd: N rollouts per step prefix -> soft/hard labels")
    from lrm_builtin.annotators.journey import JourneyAnnotator
    from lrm_builtin.annotators.judge import JudgeAnnotator
    from lrm_builtin.annotators.omegaprm import OmegaPRMAnnotator
    from lrm_builtin.annotators.pairs import PairsAnnotator

    registry.register("omegaprm", OmegaPRMAnnotator,
                      description="OmegaPRM: binary search for the first wrong step by MC estimates")
    registry.register("judge", JudgeAnnotator,
                      description="a prompted judge model labels each step (robust verdict parsing)")
    registry.register("pairs", PairsAnnotator,
                      description="step- and solution-level DPO pairs from an MC search tree")
    registry.register("journey", JourneyAnnotator,
                      description="journey learning: wrong branch, reflection, backtrack (SFT)")


@hookimpl
def lrm_register_configs(config_store):
    config_store.store(group="schema/annotate", name="mc_rollout", node=MCRolloutConfig)
    config_store.store(group="schema/annotate", name="omegaprm", node=OmegaPRMConfig)
    config_store.store(group="schema/annotate", name="judge", node=JudgeAnnotateConfig)
    config_store.store(group="schema/annotate", name="pairs", node=PairsConfig)
    config_store.store(group="schema/annotate", name="journey", node=JourneyConfig)
