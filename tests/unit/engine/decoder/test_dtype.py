"""The dtype a causal LM is served in follows its config.json: bf16 where the device runs bf16
natively, fp32 otherwise; the KV cache and the LoRA slots follow the weights."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from constellation.engine.decoder.engine import DecoderEngine
from constellation.engine.decoder.runner import load_runner
from constellation.engine.decoder.sampling import SamplingParams
from constellation.engine.models import causal_lm
from constellation.engine.models.causal_lm import serving_dtype
from constellation.engine.models.config import LMConfig
from constellation.engine.spec import AdapterSpec, BaseSpec
from constellation.testing.toy_lm import save_random_adapter, save_random_lm

from .conftest import make_limits


def _config(**kw: object) -> LMConfig:
    sizes = {"vocab_size": 8, "hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2}
    cfg = {"model_type": "llama", "intermediate_size": 16, "max_position_embeddings": 16, **sizes, **kw}
    return LMConfig.from_hf(cfg)


@pytest.mark.parametrize(
    ("declared", "native", "served"),
    [
        ({"dtype": "bfloat16"}, True, torch.bfloat16),
        ({"torch_dtype": "bfloat16"}, True, torch.bfloat16),  # the key before transformers 5
        ({"dtype": "bfloat16"}, False, torch.float32),  # emulated bf16 is slower than fp32
        ({"dtype": "float16"}, True, torch.float32),
        ({"dtype": "float32"}, True, torch.float32),
        ({}, True, torch.float32),
    ],
)
def test_serving_dtype(
    monkeypatch: pytest.MonkeyPatch, declared: dict[str, str], native: bool, served: torch.dtype
) -> None:
    monkeypatch.setattr(causal_lm, "native_bf16", lambda device: native)
    assert serving_dtype(_config(**declared), "cpu") == served


@pytest.fixture(scope="module")
def bf16_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[BaseSpec, AdapterSpec]:
    root = tmp_path_factory.mktemp("bf16")
    path = save_random_lm(root / "base", "llama", seed=3)
    adapter = save_random_adapter(path, root / "a0", rank=4, seed=4)
    weights = load_file(path / "model.safetensors")
    save_file({k: v.to(torch.bfloat16) for k, v in weights.items()}, path / "model.safetensors")
    config = json.loads((path / "config.json").read_text())
    config["dtype"] = "bfloat16"
    (path / "config.json").write_text(json.dumps(config))
    base = BaseSpec("bf16", "causal-lm", resolve=lambda: path)
    return base, AdapterSpec("a0", "bf16", resolve=lambda: adapter)


def test_bf16_checkpoint_served_in_bf16_with_adapters(
    monkeypatch: pytest.MonkeyPatch,
    bf16_model: tuple[BaseSpec, AdapterSpec],
    limits_engine: Callable[..., DecoderEngine],
    run_all: Callable[..., list[Any]],
) -> None:
    monkeypatch.setattr(causal_lm, "native_bf16", lambda device: True)
    base, adapter = bf16_model
    runner = load_runner(base, make_limits())
    assert runner.model.lm_head.weight.dtype == torch.bfloat16
    assert runner.kv.k.dtype == torch.bfloat16
    engine = limits_engine()
    params = SamplingParams(max_tokens=6, temperature=0.0)
    answers = run_all(
        engine, [engine.prepare(base, a, prompt="the cat sat", params=params) for a in (None, adapter)]
    )
    assert all(1 <= len(a.tokens) <= 6 and a.final.finish_reason in ("stop", "length") for a in answers)


def test_bf16_checkpoint_served_in_fp32_without_native_bf16(
    monkeypatch: pytest.MonkeyPatch, bf16_model: tuple[BaseSpec, AdapterSpec]
) -> None:
    monkeypatch.setattr(causal_lm, "native_bf16", lambda device: False)
    runner = load_runner(bf16_model[0], make_limits())
    assert runner.model.lm_head.weight.dtype == torch.float32
    assert runner.kv.k.dtype == torch.float32
