"""Built-in task plugin: ``arith`` (synthetic, exact step labels), ``gsm8k``, ``math500`` and
the ``processbench`` evaluator. Registered through the same hooks a third-party plugin uses.
"""

from __future__ import annotations

from lrm_engine.hookspecs import hookimpl

from .arith import ArithTask, ArithTaskConfig, NoisySolution, inject_step_noise
from .gsm8k import Gsm8kTask, Gsm8kTaskConfig
from .math500 import Math500Task, Math500TaskConfig
from .processbench import ProcessBenchTask, ProcessBenchTaskConfig

__all__ = [
    "ArithTask", "ArithTaskConfig", "Gsm8kTask", "Gsm8kTaskConfig", "Math500Task",
    "Math500TaskConfig", "ProcessBenchTask", "ProcessBenchTaskConfig", "NoisySolution",
    "inject_step_noise", "TASKS",
]

# registry name -> (factory, config schema, description)
TASKS = {
    "arith": (ArithTask, ArithTaskConfig,
              "synthetic multi-step integer arithmetic; exact answer and per-step labels"),
    "gsm8k": (Gsm8kTask, Gsm8kTaskConfig, "GSM8K grade-school math (JSONL), graded with math-verify"),
    "math500": (Math500Task, Math500TaskConfig, "MATH-500 (JSONL, \\boxed{} answers), graded with math-verify"),
    "processbench": (ProcessBenchTask, ProcessBenchTaskConfig,
                     "ProcessBench: earliest-wrong-step evaluator (error/correct accuracy, F1)"),
}


@hookimpl
def lrm_register_tasks(registry):
    for name, (factory, _schema, description) in TASKS.items():
        registry.register(name, factory, description=description)


@hookimpl
def lrm_register_configs(config_store):
    for name, (_factory, schema, _description) in TASKS.items():
        config_store.store(group="schema/task", name=name, node=schema)
