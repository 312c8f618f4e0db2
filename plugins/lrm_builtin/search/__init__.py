"""Built-in search plugins: greedy, majority (self-consistency), best_of_n, beam, lookahead,
dvts, mcts, tot_bfs, tot_dfs, sr_mcts, compute_optimal, rstar, reflexion."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional

from lrm_engine.hookspecs import hookimpl


@dataclass
class GreedyConfig:
    # Registry name of the search algorithm.
    name: str = "greedy"


@dataclass
class MajorityConfig:
    # Registry name of the search algorithm.
    name: str = "majority"
    # Number of sampled solutions per problem.
    n: int = 4


@dataclass
class BestOfNConfig:
    # Registry name of the search algorithm.
    name: str = "best_of_n"
    # Number of sampled solutions per problem.
    n: int = 4
    # Final answer: best (highest aggregated PRM score), weighted (PRM-weighted vote), majority.
    choice: str = "weighted"


@dataclass
class BeamConfig:
    # Registry name of the search algorithm.
    name: str = "beam"
    # Candidates scored per step per problem (the N of beam@N).
    n: int = 4
    # Children per kept beam; n // beam_width beams survive each step.
    beam_width: int = 4
    # Final answer among finished beams: best, weighted or majority.
    choice: str = "best"
    # Sibling candidates with the same step string: keep (each copy may be a beam, so the best
    # prefix's copies take several places and it gets more of the n samples; search-and-learn)
    # or drop (count once: n // beam_width distinct beams). arith_hard beam@16: 84% vs 64%.
    duplicates: str = "keep"


@dataclass
class LookaheadConfig:
    # Registry name of the search algorithm.
    name: str = "lookahead"
    # Candidates scored per step per problem (the N of beam@N).
    n: int = 4
    # Children per kept beam; n // beam_width beams survive each round.
    beam_width: int = 4
    # Greedy steps rolled out past each candidate before the PRM scores it (0 = beam search).
    lookahead: int = 1
    # Final answer among finished candidates: best, weighted or majority.
    choice: str = "best"


@dataclass
class DVTSConfig:
    # Registry name of the search algorithm.
    name: str = "dvts"
    # Candidates scored per step per problem (the N); n // beam_width independent subtrees.
    n: int = 4
    # Children per subtree per step (the W); each subtree keeps its best child.
    beam_width: int = 2
    # Final answer among the subtrees' solutions: best, weighted or majority.
    choice: str = "best"


@dataclass
class MCTSConfig:
    # Registry name of the search algorithm.
    name: str = "mcts"
    # Simulations (selected leaves) per tree; iterations = ceil(simulations / num_leaves).
    simulations: int = 16
    # Leaves selected per tree per iteration (K), spread by virtual loss.
    num_leaves: int = 1
    # Children generated when a node is expanded.
    k: int = 4
    # Selection rule of the select op: puct (mctx, prior-weighted) or uct (UCB1, priors unused).
    rule: str = "puct"
    # PUCT exploration constant c1 (mctx).
    c1: float = 1.25
    # PUCT exploration constant c2 (mctx).
    c2: float = 19652.0
    # UCT exploration constant c of q + c * sqrt(ln N / n) (rule=uct).
    uct_c: float = 1.4142135623730951
    # Virtual loss per pending visit while num_leaves leaves are selected.
    virtual_loss: float = 1.0
    # Action priors: policy (as the policy wrote them), logprob (softmax of step log-probs), uniform.
    prior: str = "policy"
    # Leaf value: prm (aggregated PRM path score) or rollout (greedy rollout scored by the PRM).
    value: str = "prm"
    # Terminal node value: aggregate (path aggregate) or last (reward of the final step, ORM-style).
    terminal_value: str = "aggregate"
    # Final path: visits (most-visited children) or value (best mean value children).
    final: str = "visits"
    # best (the final path) or majority / weighted vote over every solution in the tree.
    choice: str = "best"


@dataclass
class ToTBFSConfig:
    # Registry name of the search algorithm.
    name: str = "tot_bfs"
    # b: proposals (new thoughts) per level per problem.
    proposals: int = 4
    # t: states kept per level (each proposes proposals // keep thoughts).
    keep: int = 2
    # State value: aggregate (path aggregate of step scores) or last (the newest step's score).
    evaluator: str = "aggregate"
    # Final answer among finished solutions: best, weighted or majority.
    choice: str = "best"


@dataclass
class ToTDFSConfig:
    # Registry name of the search algorithm.
    name: str = "tot_dfs"
    # Thoughts proposed per expanded state.
    proposals: int = 3
    # Thoughts valued below this are pruned (in [0, 1] for a PRM).
    threshold: float = 0.5
    # Most states expanded per problem (the DFS step limit).
    step_limit: int = 16
    # Stop a problem after this many solutions above the threshold (more: vote with choice).
    solutions: int = 1
    # State value: aggregate (path aggregate of step scores) or last (the newest step's score).
    evaluator: str = "aggregate"
    # Final answer among the solutions found: best, weighted or majority.
    choice: str = "best"


@dataclass
class SRMCTSConfig:
    # Registry name of the search algorithm (LLaMA-Berry SR-MCTS; needs reward=pairwise).
    name: str = "sr_mcts"
    # Self-refine iterations per problem (each: one critique, one rewrite, one judge call).
    iterations: int = 8
    # Rewrites of one solution before it counts as fully expanded.
    max_children: int = 2
    # Initial solutions sampled from the task prompt (the roots).
    init_solutions: int = 1
    # UCT exploration constant.
    c_uct: float = 1.4
    # Node value Q = alpha * local win rate (vs parent and children) + (1 - alpha) * EBC quantile.
    alpha: float = 0.5
    # Backup: V = (1 - gamma) * Q + gamma * max child V.
    gamma: float = 0.5
    # Steps the policy may write for a critique.
    critique_steps: int = 4
    # Final answer among all solutions: best (EBC quantile), weighted or majority.
    choice: str = "best"
    # Critique prompt with {prompt}, {solution}, {question} (null = the built-in one).
    critique_template: Optional[str] = None
    # Rewrite prompt with {prompt}, {solution}, {critique}, {question} (null = the built-in one).
    rewrite_template: Optional[str] = None


@dataclass
class ComputeOptimalConfig:
    # Registry name of the search algorithm (Snell et al. compute-optimal allocation).
    name: str = "compute_optimal"
    # Budget: n solutions' worth of tokens per problem (what uniform best-of-n spends).
    n: int = 16
    # Probe solutions per problem (difficulty estimate; reused by easy questions).
    probe_n: int = 2
    # Difficulty (1 - mean probe PRM score) at or below which a question is easy (best-of-N).
    easy_threshold: float = 0.5
    # Added to every difficulty before spreading the budget (easy questions still get some).
    min_weight: float = 0.1
    # Children per beam in the hard questions' beam search.
    beam_width: int = 4
    # Smallest beam n for a hard question.
    min_beam_n: int = 2
    # Final answer of easy questions: weighted, best or majority.
    easy_choice: str = "weighted"


def _rstar_actions() -> List[str]:
    from lrm_builtin.search.rstar_actions import ACTIONS

    return list(ACTIONS)


def _rstar_templates() -> Dict[str, str]:
    from lrm_builtin.search.rstar_actions import DEFAULT_TEMPLATES

    return dict(DEFAULT_TEMPLATES)


@dataclass
class RStarConfig:
    # Registry name of the search algorithm (rStar: MCTS over prompted actions, mutual consistency).
    name: str = "rstar"
    # MCTS rollouts per problem (each: UCT select, expand, random-action simulation to a terminal).
    rollouts: int = 16
    # Actions offered (action slots, in this order): A1 one step, A2 all remaining steps,
    # A3 sub-question + answer, A4 re-answer the sub-question (under A3), A5 rephrase (at the root).
    actions: List[str] = field(default_factory=_rstar_actions)
    # Prompt suffix of each action, written after the task prompt and the trajectory (kept in it).
    templates: Dict[str, str] = field(default_factory=_rstar_templates)
    # UCT exploration constant c of q + c * sqrt(ln N / n).
    uct_c: float = 1.4
    # Most actions on one trajectory (a node this deep is terminal).
    max_depth: int = 5
    # Mutual-consistency discriminator on: pick among trajectories a second model agrees with.
    discriminate: bool = True
    # Discriminator model folder (policy=tree architecture); null = the same policy.
    discriminator: Optional[str] = None
    # The masked part starts at a random step i with mask_low <= i / steps < mask_high.
    mask_low: float = 0.2
    # Upper end of the mask position (fraction of the trajectory's steps).
    mask_high: float = 0.8


@dataclass
class ReflexionConfig:
    # Registry name of the search algorithm (Reflexion: verbal reinforcement; needs reward=<prm/orm>).
    name: str = "reflexion"
    # Attempts per problem (the first plus up to max_attempts - 1 after reflections).
    max_attempts: int = 3
    # An attempt whose aggregated reward score is below this is judged failed.
    threshold: float = 0.5
    # Reflection prompt with {prompt}, {question}, {solution}, {score} (null = the built-in one).
    reflection_template: Optional[str] = None
    # Attempt prompt with {memory} (the reflections, one per line) and {prompt} (null = built-in).
    attempt_template: Optional[str] = None
    # Steps the policy may write for one reflection.
    reflection_steps: int = 2
    # Reflections kept in the memory (the newest; older ones are dropped).
    memory_size: int = 3
    # Memory scope: episode (per problem) or task (carried across problems, in run order).
    memory: str = "episode"
    # memory=task: the results file to rebuild the memory from on resume (null: start empty).
    records: Optional[str] = None
    # Attempts and reflections decoded greedily (false: with the policy's sampling).
    greedy: bool = True


@hookimpl
def lrm_register_search_algorithms(registry):
    from lrm_builtin.search.beam import BeamSearch
    from lrm_builtin.search.greedy import GreedySearch
    from lrm_builtin.search.sampled import BestOfNSearch, MajoritySearch

    registry.register("greedy", GreedySearch, description="greedy decoding, step by step")
    registry.register("majority", MajoritySearch, description="self-consistency over n samples")
    registry.register("best_of_n", BestOfNSearch, description="n samples, PRM-best or PRM-weighted vote")
    registry.register("beam", BeamSearch, description="PRM-guided step-level beam search")

    from lrm_builtin.search.dvts import DVTSSearch
    from lrm_builtin.search.lookahead import LookaheadSearch
    from lrm_builtin.search.mcts import MCTSSearch
    from lrm_builtin.search.tot_bfs import ToTBFSSearch
    from lrm_builtin.search.tot_dfs import ToTDFSSearch

    registry.register("lookahead", LookaheadSearch,
                      description="beam search scored after k greedy look-ahead steps")
    registry.register("dvts", DVTSSearch,
                      description="diverse verifier tree search: n/W independent PRM beams")
    registry.register("mcts", MCTSSearch,
                      description="MCTS over steps (PUCT or UCT select), PRM (or rollout) leaf values")
    registry.register("tot_bfs", ToTBFSSearch,
                      description="Tree-of-Thoughts BFS: best t of b proposals per level")
    registry.register("tot_dfs", ToTDFSSearch,
                      description="Tree-of-Thoughts DFS: value threshold, backtracking")

    from lrm_builtin.search.compute_optimal import ComputeOptimalSearch
    from lrm_builtin.search.sr_mcts import SRMCTSSearch

    registry.register("sr_mcts", SRMCTSSearch,
                      description="LLaMA-Berry SR-MCTS: critique + rewrite whole solutions, pairwise EBC values")
    registry.register("compute_optimal", ComputeOptimalSearch,
                      description="probe difficulty, spread the token budget: best-of-N easy, beam hard")

    from lrm_builtin.search.reflexion import ReflexionSearch
    from lrm_builtin.search.rstar import RStarSearch

    registry.register("rstar", RStarSearch,
                      description="rStar: MCTS over five prompted actions, self-consistency rewards, "
                                  "mutual-consistency discriminator")
    registry.register("reflexion", ReflexionSearch,
                      description="Reflexion: failed attempts (by the reward) -> written reflections -> retry")


@hookimpl
def lrm_register_configs(config_store):
    for name, node in (("greedy", GreedyConfig), ("majority", MajorityConfig),
                       ("best_of_n", BestOfNConfig), ("beam", BeamConfig)):
        config_store.store(group="schema/search", name=name, node=node)
    for name, node in (("lookahead", LookaheadConfig), ("dvts", DVTSConfig), ("mcts", MCTSConfig),
                       ("tot_bfs", ToTBFSConfig), ("tot_dfs", ToTDFSConfig)):
        config_store.store(group="schema/search", name=name, node=node)
    for name, node in (("sr_mcts", SRMCTSConfig), ("compute_optimal", ComputeOptimalConfig)):
        config_store.store(group="schema/search", name=name, node=node)
    for name, node in (("rstar", RStarConfig), ("reflexion", ReflexionConfig)):
        config_store.store(group="schema/search", name=name, node=node)
