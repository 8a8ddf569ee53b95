"""Generated token ids to streamed text: never emits a stop string, or a character whose bytes
are still split across tokens.

Each new token is decoded in time independent of how many came before it (the tokenizers
library's `DecodeStream`, or a window since the last emitted text), not by decoding the whole
output again, which made a long answer quadratic in its length.
"""

from __future__ import annotations

from typing import Protocol

from tokenizers import Tokenizer
from tokenizers.decoders import DecodeStream


class Detokenizer(Protocol):
    def decode(self, ids: list[int], skip_special_tokens: bool = ...) -> str: ...


class IncrementalDecoder:
    """Text of a growing id list, one token at a time: `step(ids)` after each append returns
    the new text (possibly ""), `finish(ids)` what is left at the end. Concatenated, the
    pieces equal `decode(ids, skip_special_tokens=True)`."""

    def __init__(self, tokenizer: Detokenizer) -> None:
        self.tokenizer = tokenizer
        self._backend = _streamable(tokenizer)
        self._stream = DecodeStream(skip_special_tokens=True) if self._backend is not None else None
        # Cleaning up spaces around punctuation after decoding looks across token boundaries, so
        # no window reproduces it: such a tokenizer decodes the whole output each time (exact).
        self._whole = self._stream is None and _cleans_up(tokenizer)
        self._text_len = 0  # characters returned so far
        self._prefix = 0  # window start (offset method): ids before it are settled text
        self._read = 0  # ids up to here have been returned as text

    def step(self, ids: list[int]) -> str:
        if self._stream is not None and self._backend is not None:
            chunk = self._stream.step(self._backend, ids[-1])
            if chunk is None:
                return ""
            self._read = len(ids)
            self._text_len += len(chunk)
            return str(chunk)
        if self._whole:
            return self._all(ids, final=False)
        return self._window(ids, final=False)

    def finish(self, ids: list[int]) -> str:
        """The text of ids not yet returned, an incomplete trailing character included."""
        if self._read == len(ids):
            return ""
        if self._stream is not None or self._whole:  # once per sequence for a stream: linear
            return self._all(ids, final=True)
        return self._window(ids, final=True)

    def _all(self, ids: list[int], *, final: bool) -> str:
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        if text.endswith("\ufffd") and not final:
            return ""
        self._read = len(ids)
        new, self._text_len = text[self._text_len :], len(text)
        return new

    def _window(self, ids: list[int], *, final: bool) -> str:
        """vLLM's offset method: decode the window since the last emitted text with the tokens
        before it as context (so a word's leading space survives), and return what it adds."""
        decode = self.tokenizer.decode
        before = decode(ids[self._prefix : self._read], skip_special_tokens=True)
        now = decode(ids[self._prefix :], skip_special_tokens=True)
        if len(now) <= len(before) or (now.endswith("\ufffd") and not final):
            return ""  # nothing new, or a character still split across tokens
        self._prefix, self._read = self._read, len(ids)
        self._text_len += len(now) - len(before)
        return now[len(before) :]


def _streamable(tokenizer: Detokenizer) -> Tokenizer | None:
    """The Rust tokenizer behind `tokenizer` when `DecodeStream` decodes exactly as its `decode`
    does: a fast tokenizer that does not clean up spaces around punctuation afterwards."""
    hf = getattr(tokenizer, "tokenizer", None)
    if hf is None or not getattr(hf, "is_fast", False) or _cleans_up(tokenizer):
        return None
    backend: Tokenizer = hf.backend_tokenizer
    return backend


def _cleans_up(tokenizer: Detokenizer) -> bool:
    hf = getattr(tokenizer, "tokenizer", None)
    return bool(getattr(hf, "clean_up_tokenization_spaces", False))


class TextStream:
    """Turns a growing token list into text chunks, holding back any tail that could still
    become a stop string or an incomplete UTF-8 character."""

    def __init__(self, tokenizer: Detokenizer, stop: tuple[str, ...]) -> None:
        self.tokenizer = tokenizer
        self.stop = stop
        self.ids: list[int] = []
        self.emitted = 0  # characters of the decoded text already handed out
        self.text = ""
        self._decoder = IncrementalDecoder(tokenizer)

    def push(self, ids: list[int]) -> tuple[str, bool]:
        """Add tokens; returns (text safe to emit now, whether a stop string was hit)."""
        for i in ids:
            self.ids.append(i)
            self.text += self._decoder.step(self.ids)
        hit = self._find_stop()
        if hit is not None:
            return self._take(hit), True
        return self._take(len(self.text) - self._holdback()), False

    def flush(self) -> str:
        """All text not yet emitted (the sequence has finished without a stop string)."""
        self.text += self._decoder.finish(self.ids)
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
