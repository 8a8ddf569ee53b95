"""Bounds on a request's inputs, checked before its text is tokenised whole: characters per item,
tokens per request. Why: tokenising takes time and memory in the text's length, and it runs
before any step that attributes compute, so an unbounded string is free work that stalls others.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from constellation.config import EngineLimits
from constellation.errors import InvalidInput

# The most characters a token may span on average, for `truncate`: a text is cut to this many
# characters per token the model accepts before it is tokenised. Only a text whose first tokens
# average more (long runs of whitespace, words the vocabulary lacks) keeps fewer tokens than
# tokenising it whole would.
CHARS_PER_TOKEN = 16
# Items are tokenised in chunks of about this many characters; the request's token total is
# checked after each, so a request over the limit is refused after one chunk past it.
CHUNK_CHARS = 65_536


def check_items(
    texts: Sequence[str], limits: EngineLimits, *, truncate: bool, param: str = "input"
) -> list[str]:
    """The items, each non-empty and within `max_chars_per_item` characters (cut to it with
    `truncate`, else an InvalidInput naming the item)."""
    if not texts:
        raise InvalidInput(f"{param} is empty; send at least one string", param=param)
    if len(texts) > limits.max_items_per_request:
        raise InvalidInput(
            f"{param} has {len(texts)} items; send at most {limits.max_items_per_request} per request",
            param=param,
        )
    empty = [i for i, t in enumerate(texts) if not isinstance(t, str) or not t]
    if empty:
        raise InvalidInput(
            f"{param}[{empty[0]}] is empty; every input must be a non-empty string", param=param
        )
    cap = limits.max_chars_per_item
    if truncate:
        return [t[:cap] for t in texts]
    for i, t in enumerate(texts):
        _check_chars(f"{param}[{i}]", t, cap, param, "shorten it or pass truncate: true")
    return list(texts)


def check_prompt(prompt: str | None, messages: list[dict[str, Any]] | None, limits: EngineLimits) -> None:
    """InvalidInput when a prompt, or a chat's message contents together, pass the characters
    of `max_chars_per_item`: the context window bounds the tokens only after tokenising."""
    cap = limits.max_chars_per_item
    if prompt is not None:
        _check_chars("prompt", prompt, cap, "prompt", "shorten it")
        return
    contents = [m.get("content") for m in messages or [] if isinstance(m, dict)]
    joined = "".join(c for c in contents if isinstance(c, str))
    _check_chars("messages", joined, cap, "messages", "shorten or drop earlier messages")


def _check_chars(name: str, text: str, cap: int, param: str, fix: str) -> None:
    if len(text) > cap:
        raise InvalidInput(
            f"{name} has {len(text)} characters but at most {cap} are accepted; {fix}", param=param
        )


def cut_for_tokens(text: str, max_tokens: int) -> str:
    """`text` cut to what `max_tokens` tokens can span (`CHARS_PER_TOKEN` each), at its last
    whitespace in the second half of the cut when it has one, so no word is split and the
    tokens before the cut are the ones the whole text starts with."""
    limit = max_tokens * CHARS_PER_TOKEN
    if len(text) <= limit:
        return text
    cut = text[:limit]
    space = max(cut.rfind(c) for c in " \n\t\r")
    return cut[:space] if space > limit // 2 else cut


def tokenize_bounded(
    texts: list[str],
    encode: Callable[[list[str]], list[list[int]]],
    max_tokens: int,
    *,
    fit: Callable[[int, list[int]], list[int]],
) -> list[list[int]]:
    """Token ids per text, `encode`d in chunks of about `CHUNK_CHARS` characters, each row passed
    through `fit(index, ids)` (truncate or refuse); InvalidInput once the rows' tokens pass
    `max_tokens`, before the rest is tokenised."""
    out: list[list[int]] = []
    total = 0
    for chunk in _chunks(texts):
        for row in encode(chunk):
            row = fit(len(out), row)
            out.append(row)
            total += len(row)
        if total > max_tokens:
            raise InvalidInput(
                f"input's first {len(out)} of {len(texts)} items already have {total} tokens; send "
                f"at most {max_tokens} tokens per request (split it into several requests)",
                param="input",
            )
    return out


def _chunks(texts: list[str]) -> list[list[str]]:
    chunks: list[list[str]] = [[]]
    size = 0
    for t in texts:
        if chunks[-1] and size + len(t) > CHUNK_CHARS:
            chunks.append([])
            size = 0
        chunks[-1].append(t)
        size += len(t)
    return chunks
