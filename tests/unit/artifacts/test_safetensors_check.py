"""Header validation of safetensors files: valid files parse, damaged ones raise InvalidInput.

Files are written with the `safetensors` package, then damaged byte by byte.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from constellation.artifacts import read_safetensors_header
from constellation.errors import InvalidInput

WriteTensors = Callable[..., Path]


@pytest.fixture
def valid(tmp_path: Path, write_tensors: WriteTensors) -> Path:
    return write_tensors(
        tmp_path / "ok.safetensors",
        a=np.zeros((3, 5), dtype=np.float32),
        b=np.ones((7,), dtype=np.int64),
        c=np.zeros((2, 2), dtype=np.float16),
    )


def _raw(header: Mapping[str, object], data: bytes) -> bytes:
    h = json.dumps(header).encode()
    return struct.pack("<Q", len(h)) + h + data


def test_valid_file_reports_dtype_and_shape(valid: Path) -> None:
    tensors = read_safetensors_header(valid)
    assert {k: (t.dtype, t.shape) for k, t in tensors.items()} == {
        "a": ("F32", (3, 5)),
        "b": ("I64", (7,)),
        "c": ("F16", (2, 2)),
    }


def test_truncated_file_is_refused(valid: Path) -> None:
    data = valid.read_bytes()
    valid.write_bytes(data[:-1])
    with pytest.raises(InvalidInput, match=r"truncated.*safe_serialization=True"):
        read_safetensors_header(valid)


@settings(max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(cut=st.floats(min_value=0.0, max_value=0.999))
def test_any_truncation_is_refused(valid: Path, tmp_path: Path, cut: float) -> None:
    data = valid.read_bytes()
    short = tmp_path / "short.safetensors"
    short.write_bytes(data[: int(len(data) * cut)])
    with pytest.raises(InvalidInput):
        read_safetensors_header(short)


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(blob=st.binary(max_size=200))
def test_garbage_raises_only_invalid_input(tmp_path: Path, blob: bytes) -> None:
    path = tmp_path / "junk.safetensors"
    path.write_bytes(blob)
    try:
        read_safetensors_header(path)
    except InvalidInput as e:
        assert "junk.safetensors" in e.message
    else:  # only a well-formed header describing exactly the bytes present may pass
        assert len(blob) >= 8


def test_header_length_beyond_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "x.safetensors"
    path.write_bytes(struct.pack("<Q", 10_000) + b"{}")
    with pytest.raises(InvalidInput, match="header claims 10000 bytes"):
        read_safetensors_header(path)


def test_too_short_for_length_prefix(tmp_path: Path) -> None:
    path = tmp_path / "x.safetensors"
    path.write_bytes(b"\x01\x02")
    with pytest.raises(InvalidInput, match="too short"):
        read_safetensors_header(path)


def test_bad_json_header_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "x.safetensors"
    path.write_bytes(struct.pack("<Q", 5) + b"{nope")
    with pytest.raises(InvalidInput, match="not valid JSON"):
        read_safetensors_header(path)


def test_offsets_beyond_file_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "x.safetensors"
    path.write_bytes(_raw({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 8))
    with pytest.raises(InvalidInput, match="need 16 data bytes but the file holds 8"):
        read_safetensors_header(path)


@pytest.mark.parametrize(
    ("entry", "why"),
    [
        ({"dtype": "F99", "shape": [2], "data_offsets": [0, 8]}, "unknown dtype"),
        ({"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}, "invalid shape"),
        ({"dtype": "F32", "shape": [2], "data_offsets": [0]}, "invalid data_offsets"),
        ({"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}, "does not match data_offsets"),
        ("not-an-object", "not described by a JSON object"),
    ],
)
def test_inconsistent_entries_are_refused(tmp_path: Path, entry: object, why: str) -> None:
    path = tmp_path / "x.safetensors"
    path.write_bytes(_raw({"w": entry}, b"\0" * 8))
    with pytest.raises(InvalidInput, match=why):
        read_safetensors_header(path)


def test_overlapping_tensors_are_refused(tmp_path: Path) -> None:
    header = {
        "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
        "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]},
    }
    path = tmp_path / "x.safetensors"
    path.write_bytes(_raw(header, b"\0" * 12))
    with pytest.raises(InvalidInput, match="overlap or gap"):
        read_safetensors_header(path)


def test_missing_file_is_invalid_input(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="Cannot read"):
        read_safetensors_header(tmp_path / "absent.safetensors")
