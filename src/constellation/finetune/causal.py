"""Causal-LM objective: LoRA on a decoder, loss on completion (or assistant) tokens only.

Chats are rendered with the base's own chat template, segment by segment, so the masked prompt
tokens are exactly what the server feeds the model before it generates.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import peft
import torch
from torch import Tensor, nn
from transformers import AutoModelForCausalLM, AutoTokenizer

from constellation.errors import InvalidInput
from constellation.finetune.data import ChatExample, Example, PromptExample
from constellation.finetune.targets import default_targets

IGNORE = -100  # label value that cross-entropy skips
Encoded = tuple[list[int], list[int]]  # (token ids, labels with IGNORE on prompt tokens)


class CausalObjective:
    """Owns the PEFT-wrapped decoder; turns batches of examples into a loss."""

    labels: tuple[str, ...] = ()

    def __init__(
        self,
        base_dir: Path,
        *,
        rank: int,
        alpha: int,
        targets: Sequence[str] | None,
        dropout: float,
    ) -> None:
        self.tokenizer = AutoTokenizer.from_pretrained(base_dir)
        model = AutoModelForCausalLM.from_pretrained(base_dir, use_safetensors=True, dtype=torch.float32)
        lora = peft.LoraConfig(
            r=rank,
            lora_alpha=alpha,
            lora_dropout=dropout,
            target_modules=list(targets or default_targets(model.config.model_type)),
            bias="none",
            task_type="CAUSAL_LM",
        )
        self.model = peft.get_peft_model(model, lora)
        self.module: nn.Module = self.model
        pad = self.tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else (self.tokenizer.eos_token_id or 0)

    def param_groups(self, lr: float, head_lr: float) -> list[dict[str, object]]:
        return [{"params": [p for p in self.model.parameters() if p.requires_grad], "lr": lr}]

    def _ids(self, text: str, *, special: bool = False) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=special)["input_ids"])

    def _prompt_ids(self, ex: PromptExample) -> Encoded:
        prompt = self._ids(ex.prompt, special=True)
        eos = [self.tokenizer.eos_token_id] if self.tokenizer.eos_token_id is not None else []
        completion = self._ids(ex.completion) + eos
        return prompt + completion, [IGNORE] * len(prompt) + completion

    def _render(self, messages: list[dict[str, str]], generation_prompt: bool) -> str:
        out = self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=generation_prompt
        )
        return str(out)

    def _chat_ids(self, ex: ChatExample) -> Encoded:
        if not self.tokenizer.chat_template:
            raise InvalidInput(
                "this base has no chat template; send {prompt, completion} lines instead of messages",
                param="data",
            )
        msgs = [{"role": role, "content": content} for role, content in ex.messages]
        ids: list[int] = []
        labels: list[int] = []
        done = ""
        for i, (role, _) in enumerate(ex.messages):
            if role != "assistant":
                continue
            prefix = self._render(msgs[:i], True) if i else self._render([], True)
            full = self._render(msgs[: i + 1], False)
            if not (prefix.startswith(done) and full.startswith(prefix)):
                raise InvalidInput(
                    "the base's chat template does not render chats incrementally; use prompt/completion"
                )
            masked, learned = self._ids(prefix[len(done) :]), self._ids(full[len(prefix) :])
            ids += masked + learned
            labels += [IGNORE] * len(masked) + learned
            done = full
        return ids, labels

    def encode(self, examples: Sequence[Example], max_length: int) -> list[Encoded]:
        out = []
        for n, ex in enumerate(examples):
            ids, labels = self._chat_ids(ex) if isinstance(ex, ChatExample) else self._prompt_ids(ex)  # type: ignore[arg-type]
            ids, labels = ids[:max_length], labels[:max_length]
            if all(y == IGNORE for y in labels[1:]):
                raise InvalidInput(
                    f"example {n + 1}: its prompt fills max_length={max_length} tokens, leaving nothing "
                    "to learn; shorten it or raise max_length",
                    param="data",
                )
            out.append((ids, labels))
        return out

    def _forward(self, batch: Sequence[Encoded]) -> tuple[Tensor, int]:
        """Mean token loss of the batch and its number of learned tokens."""
        width = max(len(ids) for ids, _ in batch)
        ids = torch.full((len(batch), width), self.pad_id)  # [B, S]
        labels = torch.full((len(batch), width), IGNORE)  # [B, S]
        mask = torch.zeros((len(batch), width), dtype=torch.long)  # [B, S]
        for row, (x, y) in enumerate(batch):
            ids[row, : len(x)], labels[row, : len(y)], mask[row, : len(x)] = (
                torch.tensor(x),
                torch.tensor(y),
                1,
            )
        loss = self.model(input_ids=ids, attention_mask=mask, labels=labels).loss
        return loss, int((labels[:, 1:] != IGNORE).sum())

    def loss(self, batch: Sequence[Encoded]) -> Tensor:
        return self._forward(batch)[0]

    @torch.no_grad()
    def evaluate(self, batches: Sequence[Sequence[Encoded]]) -> dict[str, float]:
        total, tokens = 0.0, 0
        for batch in batches:
            loss, n = self._forward(batch)
            total, tokens = total + float(loss) * n, tokens + n
        mean = total / max(tokens, 1)
        return {"valid_loss": mean, "valid_perplexity": float(torch.tensor(mean).exp())}

    def save(self, out_dir: Path) -> None:
        self.model.save_pretrained(str(out_dir), safe_serialization=True)
