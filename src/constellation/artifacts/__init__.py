"""Content-addressed store of weights and data sets, sha256-verified on every load.

No torch here: safetensors headers, PEFT configs and model cards are read as plain files; the
one exception is `gguf.converted`, which dequantises a GGUF file through transformers.
"""

from constellation.artifacts.card import ModelCard, parse_card, read_card
from constellation.artifacts.peft import check_adapter_fits_base
from constellation.artifacts.safetensors_check import TensorInfo, read_safetensors_header
from constellation.artifacts.store import Artifact, ArtifactStore, sha256_file

__all__ = [
    "Artifact",
    "ArtifactStore",
    "ModelCard",
    "TensorInfo",
    "check_adapter_fits_base",
    "parse_card",
    "read_card",
    "read_safetensors_header",
    "sha256_file",
]
