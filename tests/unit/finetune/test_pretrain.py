"""The demo's tiny causal LM: saved as safetensors with its tokenizer, chat template and toy card."""

from __future__ import annotations

import json
from pathlib import Path

from transformers import AutoModelForCausalLM, AutoTokenizer


def test_tiny_lm_is_a_loadable_llama_with_a_toy_card(tiny_lm: Path) -> None:
    assert (tiny_lm / "model.safetensors").is_file() and not list(tiny_lm.glob("*.bin"))
    card = (tiny_lm / "README.md").read_text()
    assert card.startswith("---\nlicense: apache-2.0\n") and "toy" in card
    assert json.loads((tiny_lm / "training.json").read_text())["steps"] == 3
    model = AutoModelForCausalLM.from_pretrained(tiny_lm)
    tok = AutoTokenizer.from_pretrained(tiny_lm)
    assert model.config.model_type == "llama"
    chat = tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert chat == "<|user|>\nhi</s>\n<|assistant|>\n"
    ids = tok(chat, add_special_tokens=False)["input_ids"]
    assert tok.convert_tokens_to_ids("<|assistant|>") in ids  # special tokens stay whole
    out = model.generate(
        **tok(chat, return_tensors="pt", add_special_tokens=False), max_new_tokens=3, do_sample=False
    )
    assert out.shape[1] > len(ids)
