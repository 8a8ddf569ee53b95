"""LoRA fine-tuning (PEFT) from JSONL: data validation, training, and the demo's tiny causal LM.

Registry-free: callers record data sets, adapters and lineage from the returned results.
"""

from constellation.finetune.data import (
    ChatExample,
    Dataset,
    Example,
    FinetuneTask,
    PromptExample,
    TextExample,
    load_jsonl,
    load_many,
    weights_by_count,
)
from constellation.finetune.trainer import LoraConfig, Progress, TrainingCancelled, TrainResult, train_lora

__all__ = [
    "ChatExample",
    "Dataset",
    "Example",
    "FinetuneTask",
    "LoraConfig",
    "Progress",
    "PromptExample",
    "TextExample",
    "TrainResult",
    "TrainingCancelled",
    "load_jsonl",
    "load_many",
    "train_lora",
    "weights_by_count",
]
