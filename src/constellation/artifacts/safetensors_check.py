"""Reads and validates safetensors headers without torch, so bad weights are refused at import.

Format: 8-byte little-endian header length, a JSON header, then the tensor bytes it describes.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path

from constellation.errors import InvalidInput

# Bits per element; sub-byte float formats exist in recent safetensors releases.
DTYPE_BITS: dict[str, int] = {
    "BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8,
    "I16": 16, "U16": 16, "F16": 16, "BF16": 16,
    "I32": 32, "U32": 32, "F32": 32,
    "I64": 64, "U64": 64, "F64": 64, "C64": 64,
    "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6,
}  # fmt: skip
MAX_HEADER_BYTES = 100 * 1024 * 1024  # the reference implementation's own limit
_FIX = (
    "Re-export it with `model.save_pretrained(dir, safe_serialization=True)` "
    "or `safetensors.torch.save_file(state_dict, path)`, then import again."
)


@dataclass(frozen=True, slots=True)
class TensorInfo:
    """One tensor as its header describes it."""

    dtype: str
    shape: tuple[int, ...]


def read_safetensors_header(path: Path) -> dict[str, TensorInfo]:
    """Validate `path` as a complete safetensors file and return its tensors by name."""
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            prefix = f.read(8)
            if len(prefix) < 8:
                raise _bad(path, f"it is only {size} bytes, too short for the 8-byte header length")
            (n,) = struct.unpack("<Q", prefix)
            if n > MAX_HEADER_BYTES or 8 + n > size:
                raise _bad(path, f"its header claims {n} bytes but the file has {size} (truncated?)")
            raw = f.read(n)
    except OSError as e:
        raise InvalidInput(f"Cannot read {path}: {e.strerror}. Check the path and its permissions.")
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _bad(path, f"its header is not valid JSON ({e})")
    if not isinstance(header, dict):
        raise _bad(path, "its header is not a JSON object")
    return _tensors(path, header, data_len=size - 8 - n)


def _tensors(path: Path, header: dict[str, object], *, data_len: int) -> dict[str, TensorInfo]:
    """Check each entry's dtype, shape and offsets; the data region must be covered exactly."""
    meta = header.pop("__metadata__", None)
    if meta is not None and not isinstance(meta, dict):
        raise _bad(path, "its __metadata__ is not a JSON object")
    spans: list[tuple[int, int, str]] = []
    out: dict[str, TensorInfo] = {}
    for name, entry in header.items():
        info, begin, end = _entry(path, name, entry)
        out[name] = info
        spans.append((begin, end, name))
    cursor = 0
    for begin, end, name in sorted(spans):
        if begin != cursor:
            raise _bad(path, f"tensor {name!r} starts at byte {begin}, expected {cursor} (overlap or gap)")
        cursor = end
    if cursor != data_len:
        raise _bad(path, f"its tensors need {cursor} data bytes but the file holds {data_len} (truncated?)")
    return out


def _entry(path: Path, name: str, entry: object) -> tuple[TensorInfo, int, int]:
    if not isinstance(entry, dict):
        raise _bad(path, f"tensor {name!r} is not described by a JSON object")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in DTYPE_BITS:
        raise _bad(path, f"tensor {name!r} has unknown dtype {dtype!r}")
    if not isinstance(shape, list) or not all(_is_nat(d) for d in shape):
        raise _bad(path, f"tensor {name!r} has an invalid shape {shape!r}")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_nat(o) for o in offsets)):
        raise _bad(path, f"tensor {name!r} has invalid data_offsets {offsets!r}")
    begin, end = offsets
    bits = math.prod(shape) * DTYPE_BITS[dtype]
    if end < begin or bits % 8 or end - begin != bits // 8:
        raise _bad(path, f"tensor {name!r} ({dtype} {shape}) does not match data_offsets {offsets}")
    return TensorInfo(dtype=dtype, shape=tuple(shape)), begin, end


def _is_nat(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def _bad(path: Path, why: str) -> InvalidInput:
    return InvalidInput(f"{path.name} is not a valid safetensors file: {why}. {_FIX}")
