"""Training: the one loop (:class:`Trainer`), checkpoints, SFT data and the ``train_sft`` entry.

Imports are lazy-light: importing this package pulls in torch but not transformers.
"""

from .data import (DataOrder, SFTBatchSource, SFTDataset, SFTExample, collate_sft,
                   sft_examples_from_task, tokenize_sft)
from .schedule import CosineWithWarmup
from .sft import SFTDataConfig, train_sft
from .trainer import TrainConfig, Trainer, TrainResult, read_data_log

__all__ = [
    "CosineWithWarmup", "DataOrder", "SFTBatchSource", "SFTDataConfig", "SFTDataset", "SFTExample",
    "TrainConfig", "TrainResult", "Trainer", "collate_sft", "read_data_log", "sft_examples_from_task",
    "tokenize_sft", "train_sft",
]
