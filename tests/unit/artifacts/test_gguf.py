"""GGUF import refuses, by name, what the engine cannot serve, before converting anything.

The conversion of a real file (SmolLM2's) is checked end to end in tests/integration/test_smollm2.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGUFWriter

from constellation.artifacts.gguf import inspect_gguf, is_gguf
from constellation.errors import InvalidInput


def _write(path: Path, arch: str, tensors: dict[str, tuple[np.ndarray, GGMLQuantizationType | None]]) -> Path:
    w = GGUFWriter(str(path), arch)
    w.add_name("tiny")
    w.add_license("MIT")
    for name, (data, raw) in tensors.items():
        if raw is None:
            w.add_tensor(name, data)
        else:
            w.add_tensor(name, data, raw_dtype=raw)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _dense() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((4, 32)).astype(np.float32)


def test_a_served_architecture_is_described_with_its_licence_and_types(tmp_path: Path) -> None:
    path = _write(tmp_path / "ok.gguf", "llama", {"token_embd.weight": (_dense(), None)})
    src = inspect_gguf(path)
    assert (src.architecture, src.license, src.tensor_types, src.name) == ("llama", "mit", ("F32",), "tiny")
    assert len(src.sha256) == 64 and src.as_card()["source"]["format"] == "gguf"


def test_an_unserved_architecture_is_refused_by_name(tmp_path: Path) -> None:
    path = _write(tmp_path / "mamba.gguf", "mamba", {"token_embd.weight": (_dense(), None)})
    with pytest.raises(InvalidInput, match=r"architecture 'mamba'.*served architectures: llama"):
        inspect_gguf(path)


def test_a_quantisation_that_cannot_be_dequantised_is_refused_by_name(tmp_path: Path) -> None:
    q8_1 = np.zeros((4, 40), dtype=np.uint8)  # 4 rows of one Q8_1 block (32 values in 40 bytes)
    path = _write(
        tmp_path / "q81.gguf", "llama", {"w": (_dense(), None), "q": (q8_1, GGMLQuantizationType.Q8_1)}
    )
    with pytest.raises(InvalidInput, match=r"type Q8_1, which cannot be dequantised"):
        inspect_gguf(path)


def test_a_file_that_is_not_gguf_is_refused_as_such(tmp_path: Path) -> None:
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"PK\x03\x04 not a gguf")
    assert is_gguf(fake) and not is_gguf(tmp_path)
    with pytest.raises(InvalidInput, match="not a GGUF file"):
        inspect_gguf(fake)
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(_write(tmp_path / "whole.gguf", "llama", {"w": (_dense(), None)}).read_bytes()[:40])
    with pytest.raises(InvalidInput, match="not a readable GGUF file"):
        inspect_gguf(truncated)
