"""Generated token ids to streamed text: never emits a stop string, or a character whose bytes
are still split across tokens.
"""

from __future__ import annotations

from typing import Protocol


class Detokenizer(Protocol):
    def decode(self, ids: list[int], skip_special_tokens: bool = ...) -> str: ...


class TextStream:
    """Turns a growing token list into text chunks, holding back any tail that could still
    become a stop string or an incomplete UTF-8 character."""

    def __init__(self, tokenizer: Detokenizer, stop: tuple[str, ...]) -> None:
        self.tokenizer = tokenizer
        self.stop = stop
        self.ids: list[int] = []
        self.emitted = 0  # characters of the decoded text already handed out
        self.text = ""

    def push(self, ids: list[int]) -> tuple[str, bool]:
        """Add tokens; returns (text safe to emit now, whether a stop string was hit)."""
        self.ids.extend(ids)
        self.text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        hit = self._find_stop()
        if hit is not None:
            return self._take(hit), True
        return self._take(len(self.text) - self._holdback()), False

    def flush(self) -> str:
        """All text not yet emitted (the sequence has finished without a stop string)."""
        return self._take(len(self.text))

    def _take(self, end: int) -> str:
        if end <= self.emitted:
            return ""
        out, self.emitted = self.text[self.emitted : end], end
        return out

    def _find_stop(self) -> int | None:
        start = max(0, self.emitted - max((len(s) for s in self.stop), default=0))
        found = [i for s in self.stop if (i := self.text.find(s, start)) >= 0]
        return min(found) if found else None

    def _holdback(self) -> int:
        text = self.text
        hold = 1 if text.endswith("\ufffd") else 0
        for s in self.stop:
            for n in range(min(len(s) - 1, len(text)), hold, -1):
                if text.endswith(s[:n]):
                    hold = n
                    break
        return hold
