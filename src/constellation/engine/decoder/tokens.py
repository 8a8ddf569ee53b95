"""Prompt side of a causal LM: its tokenizer, chat template, EOS ids and context checks.

Everything here runs on the caller's thread, before a request reaches the engine loop.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from constellation.engine.decoder.sampling import SamplingDefaults
from constellation.engine.models.config import LMConfig, read_config
from constellation.errors import InvalidInput

ROLES = ("system", "user", "assistant", "tool", "developer")


@dataclass(frozen=True, slots=True)
class LMTokenizer:
    """A base's tokenizer plus what the engine needs to stop and to bound a sequence."""

    tokenizer: PreTrainedTokenizerBase
    config: LMConfig
    eos_ids: frozenset[int]
    defaults: SamplingDefaults = field(default_factory=SamplingDefaults)

    @classmethod
    def load(cls, path: Path) -> LMTokenizer:
        """The tokenizer, with EOS ids and sampling defaults from config.json, the tokenizer and
        generation_config.json together (a chat model often ends its turn on a token that only
        generation_config.json names)."""
        cfg = read_config(path)
        # tokenizer.json is the exact pipeline; AutoTokenizer may swap in a model-specific class.
        loader = PreTrainedTokenizerFast if (path / "tokenizer.json").is_file() else AutoTokenizer
        tok = loader.from_pretrained(str(path), local_files_only=True)
        gen = _generation_config(path)
        eos = set(cfg.eos_ids) | _ids(gen.get("eos_token_id"))
        if tok.eos_token_id is not None:
            eos.add(int(tok.eos_token_id))
        return cls(tok, cfg, frozenset(eos), SamplingDefaults.from_generation_config(gen))

    def encode_prompt(self, prompt: str) -> list[int]:
        if not prompt:
            raise InvalidInput("prompt is empty; send at least one character", param="prompt")
        return list(self.tokenizer(prompt)["input_ids"])

    def encode_chat(self, messages: list[dict[str, Any]]) -> list[int]:
        """Render `messages` with the base's chat template, ready for the assistant's turn."""
        check_messages(messages)
        if not self.tokenizer.chat_template:
            raise InvalidInput(
                "this model has no chat template; call /v1/completions with a prompt instead",
                param="messages",
            )
        text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return list(self.tokenizer(str(text), add_special_tokens=False)["input_ids"])

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return str(self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens))


def _generation_config(path: Path) -> dict[str, Any]:
    file = path / "generation_config.json"
    if not file.is_file():
        return {}
    try:
        cfg = json.loads(file.read_text())
    except (OSError, ValueError) as e:
        raise InvalidInput(f"generation_config.json of {path.name} is not valid JSON: {e}") from e
    return cfg if isinstance(cfg, dict) else {}


def _ids(value: Any) -> set[int]:
    values = value if isinstance(value, list) else [value]
    return {int(v) for v in values if isinstance(v, int) and not isinstance(v, bool) and v >= 0}


def check_messages(messages: list[dict[str, Any]]) -> None:
    if not messages:
        raise InvalidInput("messages is empty; send at least one {role, content} message", param="messages")
    for i, m in enumerate(messages):
        role = m.get("role") if isinstance(m, dict) else None
        if role not in ROLES:
            raise InvalidInput(
                f"messages[{i}].role is {role!r}; use one of {', '.join(ROLES)}", param="messages"
            )
        if not isinstance(m.get("content"), str):
            raise InvalidInput(f"messages[{i}].content must be a string", param="messages")


def fit_max_new(n_prompt: int, max_tokens: int | None, context: int) -> int:
    """How many tokens a request may generate; refuses prompts or budgets that cannot fit."""
    if n_prompt >= context:
        raise InvalidInput(
            f"the prompt has {n_prompt} tokens but this model's context holds {context}; "
            f"shorten the prompt to at most {context - 1} tokens",
            param="messages",
        )
    room = context - n_prompt
    if max_tokens is not None and max_tokens > room:
        raise InvalidInput(
            f"max_tokens={max_tokens} cannot fit: the prompt uses {n_prompt} of {context} context "
            f"tokens, so at most {room} can be generated; lower max_tokens to {room} or less",
            param="max_tokens",
        )
    return room if max_tokens is None else max_tokens
