"""Checks a directory or file is acceptable before it enters the store (no bytes copied yet).

Refuses pickle weights, missing configs, corrupt safetensors and unreadable JSONL, saying what to do.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from constellation.artifacts.peft import read_adapter, read_json_object, refuse_pickles
from constellation.artifacts.safetensors_check import read_safetensors_header
from constellation.errors import InvalidInput

MANIFEST = "manifest.json"
_SKIP_DIRS = {"__pycache__"}  # plus every dot-directory (.git, .cache from hub downloads)


def list_files(src: Path) -> list[tuple[str, Path]]:
    """(relative posix name, path) for every regular file under `src`, sorted, skipping caches."""
    if not src.is_dir():
        raise InvalidInput(f"{src} is not a directory; pass the folder that save_pretrained wrote.")
    out: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(src):
        dirnames[:] = [d for d in dirnames if not d.startswith(".") and d not in _SKIP_DIRS]
        for name in filenames:
            path = Path(dirpath) / name
            if path.is_file():  # follows symlinks, as in hub snapshot folders
                out.append((path.relative_to(src).as_posix(), path))
    if not out:
        raise InvalidInput(f"{src} is empty; pass the folder that save_pretrained wrote.")
    if any(rel == MANIFEST for rel, _ in out):
        raise InvalidInput(f"{src} has a top-level {MANIFEST}, a name the store reserves; rename it.")
    return sorted(out)


def validate_model_dir(src: Path, files: list[tuple[str, Path]]) -> None:
    """A Hugging Face model folder: config.json plus valid safetensors weights, no pickles."""
    _refuse_pickles(src, files)
    read_json_object(src / "config.json", what="a Hugging Face model directory")
    _check_weights(src, files)
    _check_shard_index(src, files)


def validate_adapter_dir(src: Path, files: list[tuple[str, Path]]) -> None:
    """A PEFT LoRA folder that serving can apply (`peft.read_adapter`), no pickles anywhere in it."""
    _refuse_pickles(src, files)
    read_adapter(src)
    _check_weights(src, files)


def count_jsonl(path: Path) -> int:
    """Number of JSON-object lines in `path`, streaming; blank lines are ignored."""
    n = 0
    try:
        with path.open("r", encoding="utf-8") as f:
            for lineno, line in enumerate(f, start=1):
                if line.strip():
                    _check_jsonl_line(path, lineno, line)
                    n += 1
    except UnicodeDecodeError:
        raise InvalidInput(f"{path.name} is not UTF-8 text; save it as UTF-8 JSONL (one JSON object a line).")
    except OSError as e:
        raise InvalidInput(f"Cannot read {path}: {e.strerror}. Check the path and its permissions.")
    if n == 0:
        raise InvalidInput(f"{path.name} has no examples; write one JSON object per line.")
    return n


def _check_jsonl_line(path: Path, lineno: int, line: str) -> None:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise InvalidInput(f"{path.name} line {lineno} is not valid JSON ({e.msg}); fix that line.")
    if not isinstance(obj, dict):
        raise InvalidInput(f"{path.name} line {lineno} is not a JSON object; write one object per line.")


def _refuse_pickles(src: Path, files: list[tuple[str, Path]]) -> None:
    refuse_pickles(f"{src.name}/", [rel for rel, _ in files])


def _check_weights(src: Path, files: list[tuple[str, Path]]) -> None:
    weights = [p for rel, p in files if rel.endswith(".safetensors")]
    if not weights:
        raise InvalidInput(
            f"{src.name}/ has no .safetensors weights. Save the model with "
            f"`save_pretrained(dir, safe_serialization=True)` and import that folder."
        )
    for p in weights:
        read_safetensors_header(p)


def _check_shard_index(src: Path, files: list[tuple[str, Path]]) -> None:
    """A sharded checkpoint's index must only name shards that are present."""
    index = src / "model.safetensors.index.json"
    if not index.is_file():
        return
    weight_map = read_json_object(index, what="a sharded checkpoint").get("weight_map")
    if not isinstance(weight_map, dict):
        raise InvalidInput(f"{index.name} has no weight_map; regenerate it with save_pretrained.")
    present = {rel for rel, _ in files}
    missing = sorted({str(v) for v in weight_map.values()} - present)
    if missing:
        raise InvalidInput(f"{index.name} names shards that are missing: {', '.join(missing)}; copy them in.")
