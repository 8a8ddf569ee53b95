"""GGUF import: a llama.cpp model file becomes a Hugging Face directory of safetensors.

A GGUF file carries everything a base needs (architecture, weights, tokenizer, chat template,
licence) in one file, often quantised. The engine serves dense weights, so the import
dequantises to fp32 once, at registration, and the result is stored and verified like any
other model directory; the GGUF's own sha256 is kept as the source of the weights.

Metadata is read with `gguf` (numpy only) so that a file the engine cannot serve is refused
before anything heavy happens; the conversion itself goes through transformers' GGUF loader
(the one place in `artifacts` that imports torch, lazily).
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from constellation.artifacts.store import sha256_file
from constellation.errors import InvalidInput

GGUF_MAGIC = b"GGUF"
# GGUF architecture names the decoder engine serves (Mistral files are written as "llama").
SERVED_ARCHITECTURES = ("llama", "qwen2", "gpt2")
DENSE_TYPES = ("F32", "F16", "BF16")


@dataclass(frozen=True, slots=True)
class GgufSource:
    """What the file said about itself, recorded on the registered model's card."""

    sha256: str
    file_name: str
    architecture: str
    name: str | None
    license: str | None
    tensor_types: tuple[str, ...]  # distinct GGML types of the weights, e.g. ("F32", "Q4_1")

    def as_card(self) -> dict[str, Any]:
        return {
            "source": {
                "format": "gguf",
                "file": self.file_name,
                "sha256": self.sha256,
                "architecture": self.architecture,
                "name": self.name,
                "tensor_types": list(self.tensor_types),
                "dequantised_to": "float32",
            }
        }


def is_gguf(path: Path) -> bool:
    """A regular file named *.gguf or starting with GGUF's magic bytes (checked on inspection)."""
    if not path.is_file():
        return False
    if path.suffix.lower() == ".gguf":
        return True
    with path.open("rb") as f:
        return f.read(4) == GGUF_MAGIC


def inspect_gguf(path: Path) -> GgufSource:
    """Read the header and refuse what cannot be served, naming the architecture or the type."""
    from gguf import GGUFReader

    with path.open("rb") as f:
        if f.read(4) != GGUF_MAGIC:
            raise InvalidInput(
                f"{path.name} is not a GGUF file (it does not start with 'GGUF')", param="path"
            )
    try:
        reader = GGUFReader(path)
    except (ValueError, OSError, IndexError, KeyError, TypeError) as e:  # truncated or corrupt
        raise InvalidInput(f"{path.name} is not a readable GGUF file: {e}", param="path") from e
    arch = _field(reader, "general.architecture")
    if arch not in SERVED_ARCHITECTURES:
        raise InvalidInput(
            f"{path.name} is a GGUF of architecture {arch!r}, which this engine does not serve; "
            f"served architectures: {', '.join(SERVED_ARCHITECTURES)}",
            param="path",
        )
    types = sorted({t.tensor_type.name for t in reader.tensors})
    bad = [t for t in types if t not in DENSE_TYPES and not _dequantisable(reader, t)]
    if bad:
        raise InvalidInput(
            f"{path.name} holds weights of type {', '.join(bad)}, which cannot be dequantised here; "
            "re-export the model with another quantisation (e.g. Q8_0, Q4_K or F16)",
            param="path",
        )
    licence = _field(reader, "general.license")
    return GgufSource(
        sha256=sha256_file(path),
        file_name=path.name,
        architecture=str(arch),
        name=_field(reader, "general.name"),
        license=licence.lower() if licence else None,
        tensor_types=tuple(types),
    )


@contextmanager
def converted(path: Path, work: Path) -> Iterator[tuple[Path, GgufSource]]:
    """A temporary HF directory (config, safetensors, tokenizer, chat template, generation
    config, a card naming the licence) made from the GGUF at `path`; removed afterwards."""
    source = inspect_gguf(path)
    work.mkdir(parents=True, exist_ok=True)
    out = Path(tempfile.mkdtemp(prefix="gguf-", dir=work))
    try:
        _convert(path, out, source)
        yield out, source
    finally:
        shutil.rmtree(out, ignore_errors=True)


def _convert(path: Path, out: Path, source: GgufSource) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    folder, name = str(path.parent), path.name
    try:  # transformers draws its own progress bar for the conversion on stderr
        with contextlib.redirect_stderr(io.StringIO()):
            tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
            model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    except (ValueError, KeyError, NotImplementedError, RuntimeError) as e:
        raise InvalidInput(f"cannot convert {path.name}: {e}", param="path") from e
    # The weights are dense fp32 now; transformers still marks the model as GGUF-quantised and
    # would refuse to save it, so that mark goes.
    model.hf_quantizer = None  # type: ignore[assignment]
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    config = json.loads((out / "config.json").read_text())
    config["_name_or_path"] = source.name or path.stem
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    card = ["---"]
    if source.license:
        card.append(f"license: {source.license}")
    card += [
        "tags: [gguf]",
        "---",
        f"Converted from {path.name} (sha256 {source.sha256}), dequantised to fp32.",
    ]
    (out / "README.md").write_text("\n".join(card) + "\n")


def _field(reader: Any, key: str) -> str | None:
    field = reader.fields.get(key)
    if field is None:
        return None
    value = field.contents()
    return str(value) if value is not None else None


def _dequantisable(reader: Any, type_name: str) -> bool:
    """Whether gguf's numpy dequantiser handles this type (tried on one tensor of it)."""
    from gguf.quants import dequantize

    tensor = next(t for t in reader.tensors if t.tensor_type.name == type_name)
    try:
        dequantize(tensor.data, tensor.tensor_type)
    except NotImplementedError:
        return False
    return True
