"""Micro policy / PRM folders for the RL tests (trained for a couple of steps: seconds)."""

from pathlib import Path

from lrm_builtin.tasks import ArithTask


def small_task() -> ArithTask:
    return ArithTask(min_steps=2, max_steps=2, max_operand=9, max_value=99, num_train=64, num_test=16,
                     shape="chain")


def micro_models(root: Path, task) -> tuple[str, str]:
    """``(policy folder, prm folder)``: micro Llamas, 2 SFT steps / 2 PRM steps."""
    from lrm_engine.train import train_prm, train_sft
    from lrm_engine.train.prm_data import oracle_prm_records

    loop = dict(total_steps=2, micro_batch_size=8, lr=1e-3, warmup_steps=0, device="cpu",
                progress=False, tensorboard=False, save_every=0)
    pol = train_sft(root / "sft", task=task, model_size="micro", data=dict(num_examples=16),
                    train=loop)
    recs = oracle_prm_records(task, "train", limit=16, noise_fraction=0.5, noise_seed=0)
    prm = train_prm(root / "prm", records=recs, task=task, model=pol.model_dir, train=loop,
                    evaluate=False)
    return pol.model_dir, prm.model_dir
