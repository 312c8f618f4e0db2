"""``lrm run`` (also plain ``lrm``): the whole pipeline on the embedded default.

SFT policy -> mc_rollout annotation -> PRM training -> test-time sweep -> report; see
lrm_engine/pipeline.py. Stages are cached by config hash under
``<runtime.output_dir>/<pipeline.run_name>/``; ``stage=<name>`` reruns one.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

if TYPE_CHECKING:
    from omegaconf import DictConfig

    from lrm_engine.components import Components


def unavailable(cfg: DictConfig, components: Components) -> str | None:
    task = components.task
    if task is None:
        return "no task selected (add task=<option>)"
    missing = [m for m in ("examples", "grade", "prompt", "noisy_solutions", "prefix_labels")
               if not callable(getattr(task, m, None))]
    if missing:
        return (f"`lrm run` trains tiny models from a synthetic task with exact step labels "
                f"(task=arith or arith_hard); {type(task).__name__} lacks {', '.join(missing)}")
    return None


def main(cfg: DictConfig, components: Components) -> Mapping[str, Any]:
    import torch
    from omegaconf import OmegaConf

    from lrm_engine.executor import make_executor
    from lrm_engine.pipeline import Pipeline, PipelineConfig
    from lrm_engine.plugin_manager import registries

    pc = PipelineConfig(**OmegaConf.to_container(cfg.pipeline, resolve=True))
    rt = cfg.runtime
    threads = int(rt.num_threads) or 1  # the default machine is small and shared: 1 thread
    torch.set_num_threads(threads)
    torch.manual_seed(int(rt.seed))
    task_cfg = OmegaConf.to_container(cfg.task, resolve=True)
    with make_executor(cfg) as executor:
        pipe = Pipeline(pc, components.task, task_cfg, Path(str(rt.output_dir)),
                        stage=cfg.get("stage"), registries=registries(), ops=components.kernels,
                        seed=int(rt.seed), executor=executor)
        return pipe.run()
