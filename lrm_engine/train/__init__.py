"""Training: the one loop (:class:`Trainer`), checkpoints, SFT and PRM data, and the ``train_sft``
and ``train_prm`` entries.

Imports are lazy-light: importing this package pulls in torch but not transformers.
"""

from .data import (DataOrder, SFTBatchSource, SFTDataset, SFTExample, collate_sft,
                   sft_examples_from_task, tokenize_sft)
from .prm import (PRMDataConfig, PRMEvalConfig, evaluate_prm_on_task, load_prm_token, score_steps,
                  train_prm)
from .prm_data import (PRMBatchSource, PRMDataset, PRMRecord, PRMRecordError, collate_prm,
                       load_prm_jsonl, oracle_prm_records, tokenize_prm, validate_prm_record,
                       write_prm_jsonl)
from .schedule import CosineWithWarmup
from .sft import SFTDataConfig, train_sft
from .trainer import TrainConfig, Trainer, TrainResult, read_data_log

__all__ = [
    "CosineWithWarmup", "DataOrder", "SFTBatchSource", "SFTDataConfig", "SFTDataset", "SFTExample",
    "TrainConfig", "TrainResult", "Trainer", "collate_sft", "read_data_log", "sft_examples_from_task",
    "tokenize_sft", "train_sft",
    "PRMBatchSource", "PRMDataConfig", "PRMDataset", "PRMEvalConfig", "PRMRecord", "PRMRecordError",
    "collate_prm", "evaluate_prm_on_task", "load_prm_jsonl", "load_prm_token", "oracle_prm_records",
    "score_steps", "tokenize_prm", "train_prm", "validate_prm_record", "write_prm_jsonl",
]
