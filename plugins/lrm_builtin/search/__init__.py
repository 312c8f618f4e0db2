"""Built-in search plugins: greedy, majority (self-consistency), best_of_n, beam."""

from __future__ import annotations

from dataclasses import dataclass

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


@hookimpl
def lrm_register_search_algorithms(registry):
    from lrm_builtin.search.beam import BeamSearch
    from lrm_builtin.search.greedy import GreedySearch
    from lrm_builtin.search.sampled import BestOfNSearch, MajoritySearch

    registry.register("greedy", GreedySearch, description="greedy decoding, step by step")
    registry.register("majority", MajoritySearch, description="self-consistency over n samples")
    registry.register("best_of_n", BestOfNSearch, description="n samples, PRM-best or PRM-weighted vote")
    registry.register("beam", BeamSearch, description="PRM-guided step-level beam search")


@hookimpl
def lrm_register_configs(config_store):
    for name, node in (("greedy", GreedyConfig), ("majority", MajorityConfig),
                       ("best_of_n", BestOfNConfig), ("beam", BeamConfig)):
        config_store.store(group="schema/search", name=name, node=node)
