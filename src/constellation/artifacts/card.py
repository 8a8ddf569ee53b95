"""Reads a Hugging Face model card (README.md YAML front matter) to pre-fill lineage.

Cards in the wild are messy, so a card that cannot be parsed yields text only, never an error.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml


@dataclass(frozen=True, slots=True)
class ModelCard:
    """What the card declares; every field is optional."""

    license: str | None = None
    base_model: str | None = None
    datasets: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    text: str = ""


def read_card(model_dir: Path) -> ModelCard | None:
    """The card in `model_dir/README.md`, or None when there is no README."""
    path = model_dir / "README.md"
    if not path.is_file():
        return None
    return parse_card(path.read_text(encoding="utf-8", errors="replace"))


def parse_card(doc: str) -> ModelCard:
    """Split `---` front matter from the body and normalise the fields HF lets be str or list."""
    meta, text = _split_front_matter(doc)
    license_ = _first(meta.get("license"))
    if license_ == "other":  # HF's convention for custom licences names them separately
        license_ = _first(meta.get("license_name")) or license_
    return ModelCard(
        license=license_,
        base_model=_first(meta.get("base_model")),
        datasets=_strs(meta.get("datasets")),
        tags=_strs(meta.get("tags")),
        text=text,
    )


def _split_front_matter(doc: str) -> tuple[dict[str, object], str]:
    lines = doc.lstrip("\ufeff").splitlines(keepends=True)
    if not lines or lines[0].strip() != "---":
        return {}, doc
    for i, line in enumerate(lines[1:], start=1):
        if line.strip() == "---":
            body = "".join(lines[i + 1 :]).strip()
            try:
                meta = yaml.safe_load("".join(lines[1:i]))
            except yaml.YAMLError:
                return {}, body
            return (meta if isinstance(meta, dict) else {}), body
    return {}, doc  # an unterminated block is not front matter


def _strs(value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    items = value if isinstance(value, list) else [value]
    return tuple(str(v) for v in items if v is not None and str(v).strip())


def _first(value: object) -> str | None:
    items = _strs(value)
    return items[0] if items else None
