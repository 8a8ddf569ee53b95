"""The demo constellation's data: every file validates, sizes meet the issue, demo.yaml is whole."""

from __future__ import annotations

import json

import pytest
import yaml

from constellation.finetune.data import load_jsonl
from constellation.finetune.demo import DEMO_DIR

DEMO = DEMO_DIR
MANIFEST = yaml.safe_load((DEMO / "demo.yaml").read_text())
CLASSIFIERS = [d for d in MANIFEST["datasets"] if "test" in d]


@pytest.mark.parametrize("entry", CLASSIFIERS, ids=lambda d: d["name"])
def test_classification_sets_validate_and_are_big_enough(entry: dict[str, str]) -> None:
    descriptions = json.loads((DEMO / entry["label_descriptions"]).read_text())
    train = load_jsonl(DEMO / entry["path"], "classification", allowed_labels=descriptions)
    test = load_jsonl(DEMO / entry["test"], "classification", allowed_labels=descriptions)
    assert train.n_examples >= 200 and test.n_examples >= 50
    assert train.labels == tuple(sorted(descriptions)) and train.duplicates_dropped == 0
    overlap = {ex.text for ex in train.examples} & {ex.text for ex in test.examples}  # type: ignore[union-attr]
    assert not overlap


def test_manifest_is_consistent() -> None:
    contributors = {c["id"] for c in MANIFEST["contributors"]}
    datasets = {d["name"]: d for d in MANIFEST["datasets"]}
    bases = {b["name"]: b for b in MANIFEST["base_models"]}
    assert bases["minilm"]["license"] == "apache-2.0"
    assert "cc-by-nc-4.0" in {d["license"] for d in CLASSIFIERS}
    assert len(CLASSIFIERS) >= 4 and len({d["provider"] for d in CLASSIFIERS}) == len(CLASSIFIERS)
    for d in datasets.values():
        assert (DEMO / d["path"]).is_file() and d["provider"] in contributors
        assert all(isinstance(v, int) for v in d["terms"].values())  # nano-USD, never floats
    for a in MANIFEST["adapters"]:
        assert a["base"] in bases and a["author"] in contributors
        assert all(name in datasets for name in a["data"])


CHATS = [d for d in MANIFEST["datasets"] if d["path"].startswith("chat/")]


@pytest.mark.parametrize("entry", CHATS, ids=lambda d: d["name"])
def test_chat_sets_validate_and_train_the_chat_adapters(entry: dict[str, str]) -> None:
    assert load_jsonl(DEMO / entry["path"], "causal-lm").n_examples >= 30
    trained_on = [a for a in MANIFEST["adapters"] if entry["name"] in a["data"]]
    assert trained_on and all(a["base"] == "smollm2" for a in trained_on)


def test_a_chat_adapter_carries_a_non_commercial_licence() -> None:
    chat = [a for a in MANIFEST["adapters"] if a["base"] == "smollm2"]
    assert len(chat) >= 3 and "cc-by-nc-4.0" in {a["license"] for a in chat}
