"""Adapters saved by PEFT itself, checked at import by `artifacts.peft` and then served: q/v and
`target_modules="all-linear"` adapters (the latter adapts BERT's pooler, which serving never
reads) embed like PEFT's merged model; what import refuses, serving never sees."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoTokenizer, BertConfig, BertModel

from constellation.artifacts.peft import check_adapter_fits_base
from constellation.config import EngineLimits
from constellation.engine.encoder.engine import EncoderEngine
from constellation.engine.lora.adapters import load_adapter
from constellation.engine.spec import AdapterSpec
from constellation.errors import InvalidInput

from ..conftest import base_spec

TEXTS = ["The cat sat on the mat.", "ok", "Adapters trained anywhere, served from one shared base model."]
TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


@pytest.fixture(scope="module")
def pooled_bert(tmp_path_factory: pytest.TempPathFactory, minilm_path: Path) -> Path:
    """A tiny random BERT saved *with* its pooler, as MiniLM's checkpoint is."""
    path = tmp_path_factory.mktemp("pooled-bert")
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=64,
    )  # fmt: skip
    BertModel(config).save_pretrained(path)
    for name in TOKENIZER_FILES:
        shutil.copy(minilm_path / name, path / name)
    return path


def _peft_adapter(base: Path, out: Path, targets: str | list[str], *, rank: int = 4) -> Path:
    torch.manual_seed(1)
    model = get_peft_model(
        BertModel.from_pretrained(base), LoraConfig(r=rank, lora_alpha=8, target_modules=targets)
    )
    with torch.no_grad():  # PEFT starts lora_B at zero; a non-zero B makes the adapter visible
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.normal_(0, 0.1)
    model.save_pretrained(str(out))
    return out


def _merged_embeddings(base: Path, adapter: Path) -> np.ndarray:
    """PEFT's own answer: the adapter merged, mean pooling, L2 normalised, one text at a time."""
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = PeftModel.from_pretrained(BertModel.from_pretrained(base), str(adapter)).merge_and_unload().eval()
    rows = []
    with torch.no_grad():
        for text in TEXTS:
            h = model(**tokenizer([text], return_tensors="pt")).last_hidden_state  # [1, L, d]
            rows.append(h.mean(dim=1)[0])
    return F.normalize(torch.stack(rows), p=2, dim=1).numpy()


def _served(base: Path, adapter: Path) -> np.ndarray:
    engine = EncoderEngine(EngineLimits(adapter_slots=2))
    spec = AdapterSpec(name=adapter.name, base="tiny", resolve=lambda: adapter)
    try:
        return asyncio.run(engine.embed(base_spec(base), spec, TEXTS)).embeddings
    finally:
        engine.close()


def test_q_v_adapter_imports_and_serves_like_merged_peft(pooled_bert: Path, tmp_path: Path) -> None:
    adapter = _peft_adapter(pooled_bert, tmp_path / "qv", ["query", "value"])
    assert check_adapter_fits_base(adapter, pooled_bert, task="embedding", max_rank=64) == []
    np.testing.assert_allclose(
        _served(pooled_bert, adapter), _merged_embeddings(pooled_bert, adapter), atol=1e-5
    )


def test_all_linear_adapter_imports_with_a_note_and_serves_like_merged_peft(
    pooled_bert: Path, tmp_path: Path
) -> None:
    adapter = _peft_adapter(pooled_bert, tmp_path / "all-linear", "all-linear")
    notes = check_adapter_fits_base(adapter, pooled_bert, task="embedding", max_rank=64)
    assert len(notes) == 1 and "pooler.dense" in notes[0] and "not served" in notes[0]
    loaded = load_adapter(AdapterSpec(name="all-linear", base="tiny", resolve=lambda: adapter))
    assert "pooler.dense" not in loaded.modules and "encoder.layer.1.output.dense" in loaded.modules
    served = _served(pooled_bert, adapter)
    np.testing.assert_allclose(served, _merged_embeddings(pooled_bert, adapter), atol=1e-5)
    # the adapter does change the embeddings (the comparison above is not base against base)
    assert not np.allclose(served, _served_base(pooled_bert), atol=1e-3)


def _served_base(base: Path) -> np.ndarray:
    engine = EncoderEngine(EngineLimits(adapter_slots=2))
    try:
        return asyncio.run(engine.embed(base_spec(base), None, TEXTS)).embeddings
    finally:
        engine.close()


def test_rank_above_the_limit_is_refused_at_import(pooled_bert: Path, tmp_path: Path) -> None:
    adapter = _peft_adapter(pooled_bert, tmp_path / "r32", ["query", "value"], rank=32)
    assert check_adapter_fits_base(adapter, pooled_bert, task="embedding", max_rank=32) == []
    with pytest.raises(InvalidInput, match=r"rank 32 on '.*query'.*largest rank served \(16"):
        check_adapter_fits_base(adapter, pooled_bert, task="embedding", max_rank=16)


def test_embedding_lora_is_refused_at_import(pooled_bert: Path, tmp_path: Path) -> None:
    adapter = _peft_adapter(pooled_bert, tmp_path / "emb", ["word_embeddings", "query"])
    with pytest.raises(InvalidInput, match=r"adapts the embedding 'embeddings\.word_embeddings'"):
        check_adapter_fits_base(adapter, pooled_bert, task="embedding")


def test_conv_lora_is_refused_at_import(pooled_bert: Path, tmp_path: Path) -> None:
    class WithConv(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 8, kernel_size=3)

    out = tmp_path / "conv"
    get_peft_model(WithConv(), LoraConfig(r=4, target_modules=["conv"])).save_pretrained(str(out))
    with pytest.raises(InvalidInput, match=r"adapts 'conv' as a convolution"):
        check_adapter_fits_base(out, pooled_bert)


def test_pickle_only_adapter_is_refused_as_a_pickle(pooled_bert: Path, tmp_path: Path) -> None:
    adapter = tmp_path / "pickled"
    model = get_peft_model(BertModel.from_pretrained(pooled_bert), LoraConfig(r=4, target_modules=["query"]))
    model.save_pretrained(str(adapter), safe_serialization=False)
    assert (adapter / "adapter_model.bin").is_file() and not (adapter / "adapter_model.safetensors").exists()
    with pytest.raises(InvalidInput, match="pickle weights are not accepted; re-save with safetensors"):
        check_adapter_fits_base(adapter, pooled_bert)
    with pytest.raises(InvalidInput, match="pickle weights are not accepted; re-save with safetensors"):
        load_adapter(AdapterSpec(name="pickled", base="tiny", resolve=lambda: adapter))
