"""LoRA training on tiny random bases: the adapter layout (PEFT + classifier head contract),
causal-LM loss masking, bitwise reproducibility with a fixed seed, and cancellation."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from safetensors.torch import load_file

from constellation.errors import InvalidInput
from constellation.finetune.causal import IGNORE, CausalObjective
from constellation.finetune.classify import predict
from constellation.finetune.data import ChatExample, PromptExample, TextExample
from constellation.finetune.trainer import LoraConfig, Progress, TrainingCancelled, train_lora

FAST = LoraConfig(epochs=2, batch_size=4, max_length=32)


def _classify(base: Path, examples: list[TextExample], out: Path, **kw: object) -> object:
    return train_lora(base_dir=base, task="classification", train=list(examples), valid=None,
                      out_dir=out, config=FAST, **kw)  # type: ignore[arg-type]  # fmt: skip


def test_classification_adapter_follows_the_head_contract(
    tiny_bert: Path, text_examples: list[TextExample], tmp_path: Path
) -> None:
    seen: list[Progress] = []
    result = train_lora(base_dir=tiny_bert, task="classification", train=text_examples, valid=None,
                        out_dir=tmp_path / "ad", config=FAST, progress=seen.append)  # fmt: skip
    out = tmp_path / "ad"
    assert result.labels == ("happy", "sad") and result.n_train + result.n_valid == 10
    assert {"valid_accuracy", "valid_loss", "train_loss"} <= set(result.metrics)
    assert not list(out.glob("*.bin")) and (out / "adapter_model.safetensors").is_file()
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["r"] == 8 and config["lora_alpha"] == 16
    assert config["target_modules"] == ["key", "query", "value"]
    head = load_file(str(out / "classifier_head.safetensors"))
    assert tuple(head["weight"].shape) == (2, 32) and tuple(head["bias"].shape) == (2,)
    assert json.loads((out / "classifier_head.json").read_text()) == {
        "labels": ["happy", "sad"],
        "pooling": "base",
    }
    lora = load_file(str(out / "adapter_model.safetensors"))
    assert any(k.startswith("base_model.model.encoder.layer.0.attention.self.query.lora_A") for k in lora)
    assert seen and seen[-1].step == result.metrics["steps"] and seen[-1].total >= seen[-1].step
    assert set(predict(tiny_bert, out, ["so glad", "never again"])) <= {"happy", "sad"}


def test_fixed_seed_gives_identical_bytes(
    tiny_bert: Path, text_examples: list[TextExample], tmp_path: Path
) -> None:
    _classify(tiny_bert, text_examples, tmp_path / "one")
    _classify(tiny_bert, text_examples, tmp_path / "two")
    for name in ("adapter_model.safetensors", "adapter_config.json", "classifier_head.safetensors"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name


def test_cancel_leaves_nothing(tiny_bert: Path, text_examples: list[TextExample], tmp_path: Path) -> None:
    cancel = threading.Event()
    with pytest.raises(TrainingCancelled):
        _classify(tiny_bert, text_examples, tmp_path / "ad", progress=lambda p: cancel.set(), cancel=cancel)
    assert list(tmp_path.iterdir()) == []


def test_refuses_a_non_empty_out_dir_and_bad_settings(
    tiny_bert: Path, text_examples: list[TextExample], tmp_path: Path
) -> None:
    (tmp_path / "ad").mkdir()
    (tmp_path / "ad" / "x").write_text("keep me")
    with pytest.raises(InvalidInput, match="not empty"):
        _classify(tiny_bert, text_examples, tmp_path / "ad")
    with pytest.raises(InvalidInput, match="rank"):
        LoraConfig(rank=0)
    with pytest.raises(InvalidInput, match="do not match task"):
        train_lora(base_dir=tiny_bert, task="classification", train=[PromptExample("a", "b")], valid=None,
                   out_dir=tmp_path / "other")  # fmt: skip


def test_causal_loss_covers_completion_and_assistant_tokens_only(tiny_lm: Path) -> None:
    obj = CausalObjective(tiny_lm, rank=4, alpha=8, targets=None, dropout=0.0)
    tok = obj.tokenizer
    (ids, labels), (chat_ids, chat_labels) = obj.encode(
        [PromptExample("hello there", " general"), ChatExample((("user", "hi"), ("assistant", "ahoy")))], 64
    )
    learned = [i for i, y in zip(ids, labels, strict=True) if y != IGNORE]
    assert tok.decode(learned) == " general</s>"
    chat_learned = [i for i, y in zip(chat_ids, chat_labels, strict=True) if y != IGNORE]
    assert tok.decode(chat_learned) == "ahoy</s>\n"
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert tok.decode(chat_ids[: len(chat_ids) - len(chat_learned)]) == prompt


def test_causal_training_writes_a_peft_adapter(
    tiny_lm: Path, causal_examples: list[PromptExample | ChatExample], tmp_path: Path
) -> None:
    result = train_lora(base_dir=tiny_lm, task="causal-lm", train=list(causal_examples), valid=None,
                        out_dir=tmp_path / "ad", config=FAST)  # fmt: skip
    assert result.labels == () and result.metrics["valid_perplexity"] > 1
    config = json.loads((tmp_path / "ad" / "adapter_config.json").read_text())
    assert config["task_type"] == "CAUSAL_LM"
    assert config["target_modules"] == ["k_proj", "o_proj", "q_proj", "v_proj"]
    keys = load_file(str(tmp_path / "ad" / "adapter_model.safetensors"))
    assert any(".self_attn.q_proj.lora_B" in k for k in keys)
