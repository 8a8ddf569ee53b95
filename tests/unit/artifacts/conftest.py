"""Fixtures for the artifact store: tiny random BERT bases and a real PEFT LoRA adapter.

Built once per session with save_pretrained; nothing is downloaded.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from constellation.artifacts import ArtifactStore

CARD = """---
license: mit
base_model: tiny-bert
datasets:
- reviews
tags: [test]
---
# tiny
"""


def _save_bert(path: Path, *, hidden: int) -> Path:
    from constellation.testing.tiny_bert import save_tiny_bert

    save_tiny_bert(path, vocab=64, hidden=hidden, heads=2, positions=32)
    (path / "README.md").write_text(CARD)
    return path


@pytest.fixture(scope="session")
def bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random BertModel (hidden 32) in a folder named like its hub id."""
    return _save_bert(tmp_path_factory.mktemp("bases") / "tiny-bert", hidden=32)


@pytest.fixture(scope="session")
def wide_bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Same architecture with hidden 48: LoRA factors for `bert_dir` do not fit it."""
    return _save_bert(tmp_path_factory.mktemp("bases") / "wide-bert", hidden=48)


@pytest.fixture(scope="session")
def lora_dir(bert_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real PEFT LoRA adapter (r=4 on query/value) saved from a model loaded from `bert_dir`."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import BertModel

    torch.manual_seed(0)
    base = BertModel.from_pretrained(bert_dir)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"]))
    out = tmp_path_factory.mktemp("adapters") / "tiny-lora"
    model.save_pretrained(str(out))
    return out


@pytest.fixture
def store(tmp_path: Path) -> ArtifactStore:
    return ArtifactStore(tmp_path / "store")


def _write_tensors(path: Path, **tensors: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(dict(tensors), str(path))
    return path


def _write_model_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    _write_tensors(path / "model.safetensors", w=np.arange(6, dtype=np.float32).reshape(2, 3))
    return path


@pytest.fixture
def write_tensors() -> Callable[..., Path]:
    """Write a safetensors file from numpy arrays: `write_tensors(path, name=array, ...)`."""
    return _write_tensors


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    """A minimal HF-looking model folder (config.json + one small tensor), no real architecture."""
    return _write_model_dir(tmp_path / "src-model")
