"""/v1/classify with a LoRA classification adapter imported in PEFT format: the answer equals
a plain reference (PEFT merged, fp32, mean pooling, head, softmax)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tests.integration.conftest import Api

pytestmark = pytest.mark.anyio
LABELS = ["billing", "bug", "praise"]


@pytest.fixture
def db_url(sqlite_url: str) -> str:
    return sqlite_url


@pytest.fixture(scope="module")
def adapter_dir(minilm_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import save_file
    from transformers import AutoModel

    torch.manual_seed(0)
    base = AutoModel.from_pretrained(str(minilm_path))
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"]))
    for name, p in peft_model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.05)
    out = tmp_path_factory.mktemp("adapter")
    peft_model.save_pretrained(str(out))
    save_file(
        {"weight": torch.randn(len(LABELS), 384) * 0.5, "bias": torch.randn(len(LABELS)) * 0.1},
        str(out / "classifier_head.safetensors"),
    )
    (out / "classifier_head.json").write_text(json.dumps({"labels": LABELS, "pooling": "base"}))
    return out


def reference(minilm_path: Path, adapter_dir: Path, texts: list[str]) -> torch.Tensor:
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(minilm_path))
    model = PeftModel.from_pretrained(AutoModel.from_pretrained(str(minilm_path)), str(adapter_dir))
    model = model.merge_and_unload().eval()
    head = load_file(str(adapter_dir / "classifier_head.safetensors"))
    rows = []
    with torch.no_grad():
        for t in texts:
            enc = tok([t], return_tensors="pt", truncation=True, max_length=256)
            h = model(**enc).last_hidden_state  # [1, S, 384]
            mask = enc["attention_mask"].unsqueeze(-1).float()
            pooled = (h * mask).sum(1) / mask.sum(1)  # [1, 384]
            rows.append(torch.softmax(pooled @ head["weight"].T + head["bias"], -1)[0])
    return torch.stack(rows)


async def test_classify_equals_reference(api: Api, minilm_path: Path, adapter_dir: Path) -> None:
    r = await api.register(minilm_path, name="minilm")
    assert r.status_code == 201
    r = await api.register(adapter_dir, name="ticket-intent", base="minilm", license="mit")
    assert r.status_code == 201, r.text
    assert r.json()["task"] == "classification" and r.json()["labels"] == LABELS
    texts = ["I was charged twice this month", "The app crashes when I log in", "Love the new dashboard!"]
    r = await api.client.post(
        "/v1/classify", headers=api.key("acme"), json={"model": "ticket-intent", "input": texts}
    )
    assert r.status_code == 200, r.text
    want = reference(minilm_path, adapter_dir, texts)
    for row, ref in zip(r.json()["data"], want, strict=True):
        probs = torch.tensor([row["probs"][label] for label in LABELS])
        assert torch.allclose(probs, ref, atol=1e-5)
        assert row["label"] == LABELS[int(ref.argmax())]
    r = await api.client.post(
        "/v1/embeddings", headers=api.key("acme"), json={"model": "ticket-intent", "input": "x"}
    )
    assert r.status_code == 400 and "/v1/classify" in r.json()["error"]["message"]


async def test_adapter_for_another_base_is_400(api: Api, minilm_path: Path, tmp_path: Path) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import BertModel

    from constellation.testing.tiny_bert import tiny_bert_config

    tiny = BertModel(tiny_bert_config(layers=1, heads=2, positions=512))
    peft_model = get_peft_model(tiny, LoraConfig(r=2, target_modules=["query"]))
    peft_model.save_pretrained(str(tmp_path / "a"))
    await api.register(minilm_path, name="minilm")
    r = await api.register(tmp_path / "a", name="misfit", base="minilm", license="mit")
    assert r.status_code == 400, r.text
    assert "query" in r.json()["error"]["message"]


async def test_non_commercial_adapter_refused_for_commercial_tenant(
    api: Api, minilm_path: Path, adapter_dir: Path
) -> None:
    await api.register(minilm_path, name="minilm")
    r = await api.register(adapter_dir, name="nc-intent", base="minilm", license="cc-by-nc-4.0")
    assert r.status_code == 201, r.text
    req = {"model": "nc-intent", "input": "refund please"}
    r = await api.client.post("/v1/classify", headers=api.key("shop", declared_use="commercial"), json=req)
    assert r.status_code == 403 and r.json()["error"]["code"] == "license_non_commercial"
    assert (
        "nc-intent" in r.json()["error"]["message"] and "cc-by-nc-4.0" in r.json()["error"]["message"].lower()
    )
    r = await api.client.post("/v1/classify", headers=api.key("lab", declared_use="non-commercial"), json=req)
    assert r.status_code == 200, r.text
    assert any(
        "NonCommercial" in n or "non-commercial" in n.lower() for n in r.json()["constellation"]["notices"]
    )
