"""Adapter import and fit checks with a real PEFT LoRA adapter on a tiny random BertModel.

Mismatched names and shapes must be refused with the module and both shapes named.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from constellation.artifacts import ArtifactStore, check_adapter_fits_base
from constellation.artifacts.peft import names_match
from constellation.errors import InvalidInput

WriteTensors = Callable[..., Path]


@pytest.fixture
def adapter(lora_dir: Path, tmp_path: Path) -> Path:
    """A private copy of the session adapter that a test may edit."""
    return Path(shutil.copytree(lora_dir, tmp_path / "tiny-lora"))


def _set_config(adapter: Path, **changes: object) -> None:
    path = adapter / "adapter_config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


def test_real_adapter_fits_its_base(lora_dir: Path, bert_dir: Path) -> None:
    check_adapter_fits_base(lora_dir, bert_dir, base_name="tiny-bert")


@pytest.mark.parametrize("base_name", ["tiny-bert", "TINY-BERT", "org/Tiny-Bert", ""])
def test_base_name_compares_last_component_case_insensitively(
    lora_dir: Path, bert_dir: Path, base_name: str
) -> None:
    check_adapter_fits_base(lora_dir, bert_dir, base_name=base_name)


def test_wrong_base_name_is_refused(lora_dir: Path, bert_dir: Path) -> None:
    with pytest.raises(InvalidInput, match=r"trained on '.*tiny-bert'.*attached to 'gpt2'"):
        check_adapter_fits_base(lora_dir, bert_dir, base_name="gpt2")


def test_empty_declared_base_is_accepted(adapter: Path, bert_dir: Path) -> None:
    _set_config(adapter, base_model_name_or_path=None)
    check_adapter_fits_base(adapter, bert_dir, base_name="anything")


@pytest.mark.parametrize(
    ("declared", "base", "ok"),
    [("/models/MiniLM/", "minilm", True), (r"C:\models\bert", "BERT", True), ("a/b", "c", False)],
)
def test_names_match(declared: str, base: str, ok: bool) -> None:
    assert names_match(declared, base) is ok


def test_shape_mismatch_names_module_and_shapes(lora_dir: Path, wide_bert_dir: Path) -> None:
    with pytest.raises(InvalidInput) as e:
        check_adapter_fits_base(lora_dir, wide_bert_dir)
    msg = e.value.message
    assert "encoder.layer.0.attention.self.query" in msg
    assert "lora_A [4, 32]" in msg and "lora_B [32, 4]" in msg
    assert "need a base weight [32, 32], but the base has [48, 48]" in msg


def test_import_with_base_checks_fit(store: ArtifactStore, lora_dir: Path, wide_bert_dir: Path) -> None:
    base = store.open(store.import_model_dir(wide_bert_dir).digest)
    with pytest.raises(InvalidInput, match="trained on a different base model"):
        store.import_adapter_dir(lora_dir, base=base)


def test_import_adapter_with_extra_files(
    store: ArtifactStore, adapter: Path, bert_dir: Path, write_tensors: WriteTensors
) -> None:
    base = store.open(store.import_model_dir(bert_dir).digest)
    head = {"weight": np.zeros((2, 32), dtype=np.float32), "bias": np.zeros(2, dtype=np.float32)}
    write_tensors(adapter / "classifier_head.safetensors", **head)
    (adapter / "classifier_head.json").write_text('{"labels": ["neg", "pos"]}')
    art = store.import_adapter_dir(adapter, base=base)
    assert art.kind == "adapter"
    assert {"adapter_config.json", "adapter_model.safetensors", "classifier_head.safetensors"} <= set(
        art.files
    )
    assert art.card is not None  # PEFT writes a README.md card with base_model
    check_adapter_fits_base(store.open(art.digest), base)


def test_wrapper_prefix_is_tolerated(adapter: Path, bert_dir: Path, write_tensors: WriteTensors) -> None:
    """An adapter trained on BertForSequenceClassification names modules `bert.encoder...`."""
    write_tensors(
        adapter / "adapter_model.safetensors",
        **{
            "base_model.model.bert.encoder.layer.1.attention.self.value.lora_A.weight": np.zeros((2, 32)),
            "base_model.model.bert.encoder.layer.1.attention.self.value.lora_B.weight": np.zeros((32, 2)),
        },
    )
    check_adapter_fits_base(adapter, bert_dir)


def test_unknown_module_is_refused(adapter: Path, bert_dir: Path, write_tensors: WriteTensors) -> None:
    write_tensors(
        adapter / "adapter_model.safetensors",
        **{
            "base_model.model.decoder.q_proj.lora_A.weight": np.zeros((2, 32)),
            "base_model.model.decoder.q_proj.lora_B.weight": np.zeros((32, 2)),
        },
    )
    with pytest.raises(InvalidInput, match=r"targets module 'decoder\.q_proj'"):
        check_adapter_fits_base(adapter, bert_dir)


def test_rank_disagreement_is_refused(adapter: Path, bert_dir: Path, write_tensors: WriteTensors) -> None:
    write_tensors(
        adapter / "adapter_model.safetensors",
        **{
            "base_model.model.encoder.layer.0.attention.self.query.lora_A.weight": np.zeros((4, 32)),
            "base_model.model.encoder.layer.0.attention.self.query.lora_B.weight": np.zeros((32, 8)),
        },
    )
    with pytest.raises(InvalidInput, match="disagree on the rank"):
        check_adapter_fits_base(adapter, bert_dir)


# --- bad adapter folders -------------------------------------------------------------------------


def test_missing_adapter_config_is_refused(store: ArtifactStore, adapter: Path) -> None:
    (adapter / "adapter_config.json").unlink()
    with pytest.raises(InvalidInput, match=r"has no adapter_config\.json"):
        store.import_adapter_dir(adapter)


def test_pickled_adapter_is_refused(store: ArtifactStore, adapter: Path) -> None:
    (adapter / "adapter_model.safetensors").rename(adapter / "adapter_model.bin")
    with pytest.raises(InvalidInput, match=r"adapter_model\.bin.*only safetensors"):
        store.import_adapter_dir(adapter)


def test_missing_adapter_weights_are_refused(store: ArtifactStore, adapter: Path) -> None:
    (adapter / "adapter_model.safetensors").unlink()
    with pytest.raises(InvalidInput, match=r"no adapter_model\.safetensors.*safe_serialization=True"):
        store.import_adapter_dir(adapter)


def test_corrupt_adapter_weights_are_refused(store: ArtifactStore, adapter: Path) -> None:
    weights = adapter / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(InvalidInput, match="not a valid safetensors file"):
        store.import_adapter_dir(adapter)


def test_non_lora_adapter_is_refused(store: ArtifactStore, adapter: Path) -> None:
    _set_config(adapter, peft_type="IA3")
    with pytest.raises(InvalidInput, match="IA3 adapter; only LoRA"):
        store.import_adapter_dir(adapter)
