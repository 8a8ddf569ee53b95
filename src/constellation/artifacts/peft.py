"""Checks that a PEFT LoRA adapter fits a base model, from headers and configs alone.

Catches the adapter-for-another-model mistake at import, with the module and shapes named.
"""

from __future__ import annotations

import json
from pathlib import Path

from constellation.artifacts.safetensors_check import TensorInfo, read_safetensors_header
from constellation.errors import InvalidInput

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
_PEFT_PREFIX = "base_model.model."
# suffix -> (factor, is_embedding); lora_A is [r, in] and lora_B is [out, r] for linear layers.
_LORA_KEYS = {
    ".lora_A.weight": ("A", False),
    ".lora_B.weight": ("B", False),
    ".lora_embedding_A": ("A", True),
    ".lora_embedding_B": ("B", True),
}


def read_json_object(path: Path, *, what: str) -> dict[str, object]:
    """Parse `path` as a JSON object, or say which file is wrong and how."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InvalidInput(f"{path.parent.name}/ has no {path.name}; {what} needs one.")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InvalidInput(f"{path.name} is not readable JSON ({e}); fix or regenerate it.")
    if not isinstance(data, dict):
        raise InvalidInput(f"{path.name} must be a JSON object; regenerate it with save_pretrained.")
    return data


def check_adapter_fits_base(adapter_dir: Path, base_dir: Path, *, base_name: str | None = None) -> None:
    """Raise InvalidInput unless the adapter's declared base and LoRA shapes match `base_dir`."""
    config = read_json_object(adapter_dir / ADAPTER_CONFIG, what="a PEFT adapter")
    declared = config.get("base_model_name_or_path")
    if base_name is not None and not names_match(str(declared or ""), base_name):
        raise InvalidInput(
            f"The adapter was trained on {declared!r} (base_model_name_or_path in {ADAPTER_CONFIG}) "
            f"but is being attached to {base_name!r}. Attach it to the base it was trained on, "
            f"or fix base_model_name_or_path if the two are the same model."
        )
    lora = read_safetensors_header(adapter_dir / ADAPTER_WEIGHTS)
    base = _base_weights(base_dir)
    transposed = bool(config.get("fan_in_fan_out"))  # GPT-2 style Conv1D stores weights [in, out]
    for module, (a, b, emb) in _lora_pairs(lora).items():
        _check_module(module, a, b, emb=emb, transposed=transposed, base=base)


def names_match(declared: str, base_name: str) -> bool:
    """Compare the last path component case-insensitively; an empty side is not evidence."""
    d, b = _last_component(declared), _last_component(base_name)
    return not d or not b or d == b


def _last_component(name: str) -> str:
    return name.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1].strip().lower()


def _base_weights(base_dir: Path) -> dict[str, tuple[int, ...]]:
    """Module path -> weight shape over the base's top-level safetensors files (shards included)."""
    files = sorted(base_dir.glob("*.safetensors"))
    if not files:
        raise InvalidInput(f"The base model directory {base_dir} has no .safetensors weights.")
    out: dict[str, tuple[int, ...]] = {}
    for f in files:
        for name, info in read_safetensors_header(f).items():
            if name.endswith(".weight"):
                out[name.removesuffix(".weight")] = info.shape
    return out


def _lora_pairs(
    lora: dict[str, TensorInfo],
) -> dict[str, tuple[tuple[int, ...] | None, tuple[int, ...] | None, bool]]:
    """Group lora_A / lora_B shapes by the module they adapt (PEFT's prefix stripped)."""
    pairs: dict[str, tuple[tuple[int, ...] | None, tuple[int, ...] | None, bool]] = {}
    for key, info in lora.items():
        for suffix, (factor, emb) in _LORA_KEYS.items():
            if key.endswith(suffix):
                module = key.removesuffix(suffix).removeprefix(_PEFT_PREFIX)
                a, b, _ = pairs.get(module, (None, None, emb))
                pairs[module] = (info.shape, b, emb) if factor == "A" else (a, info.shape, emb)
    return pairs


def _check_module(
    module: str,
    a: tuple[int, ...] | None,
    b: tuple[int, ...] | None,
    *,
    emb: bool,
    transposed: bool,
    base: dict[str, tuple[int, ...]],
) -> None:
    if a is None or b is None:
        raise InvalidInput(
            f"The adapter has only one of lora_A/lora_B for module {module!r}; re-save it with PEFT."
        )
    if len(a) != 2 or len(b) != 2:
        return  # conv LoRA: kernel shapes are not checked here
    if a[0] != b[1]:
        raise InvalidInput(
            f"Module {module!r}: lora_A {list(a)} and lora_B {list(b)} disagree on the rank; "
            f"the adapter file is inconsistent, re-save it with PEFT."
        )
    have = _find_base(module, base)
    if have is None:
        raise InvalidInput(
            f"The adapter targets module {module!r}, which the base model does not have. "
            f"Attach it to the base it was trained on."
        )
    # Linear: base [out, in]; Embedding and Conv1D store [in, out].
    want = (a[1], b[0]) if emb or transposed else (b[0], a[1])
    if tuple(have) != want:
        raise InvalidInput(
            f"Module {module!r}: the adapter's lora_A {list(a)} and lora_B {list(b)} need a base weight "
            f"{list(want)}, but the base has {list(have)}. The adapter was trained on a different "
            f"base model; attach it to that one."
        )


def _find_base(module: str, base: dict[str, tuple[int, ...]]) -> tuple[int, ...] | None:
    """Exact match, else the base module that equals it up to a wrapper prefix (`bert.`, `model.`)."""
    if module in base:
        return base[module]
    hits = [m for m in base if module.endswith("." + m) or m.endswith("." + module)]
    return base[max(hits, key=len)] if hits else None
