"""Built-in annotator plugins: mc_rollout (Math-Shepherd Monte-Carlo process labels)."""

from __future__ import annotations

from dataclasses import dataclass

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


@hookimpl
def lrm_register_annotators(registry):
    from lrm_builtin.annotators.mc_rollout import MCRolloutAnnotator

    registry.register("mc_rollout", MCRolloutAnnotator,
                      description="Math-Shepherd: N rollouts per step prefix -> soft/hard labels")


@hookimpl
def lrm_register_configs(config_store):
    config_store.store(group="schema/annotate", name="mc_rollout", node=MCRolloutConfig)
