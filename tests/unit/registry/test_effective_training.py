"""Training-time licence rules on SQLite and PostgreSQL: a derived model may not be registered
under a licence more permissive than its base and data allow (400 naming the element)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from constellation.errors import InvalidInput
from constellation.platform import Platform
from constellation.registry import contributors, datasets, licences, models, service
from constellation.registry.effective import check_derived_licence
from constellation.registry.licences import LicenceTerms
from constellation.registry.tables import Artifact, Dataset

DIGEST = "0" * 64


@pytest.fixture
def s(platform: Platform) -> Iterator[Session]:
    with platform.db.session() as session:
        contributors.ensure_contributor(session, id="acme", name="ACME", kind="organisation")
        session.add(Artifact(digest=DIGEST, kind="model", size_bytes=0, files={}))
        licences.add_custom_licence(
            session, terms=LicenceTerms(id="cap-1k", name="Cap 1k", commercial_use=True, user_limit=1000)
        )
        yield session


def _dataset(s: Session, name: str, licence: str) -> Dataset:
    sha = name.encode().hex().ljust(64, "0")
    return datasets.add_dataset(
        s,
        name=name,
        artifact_digest=DIGEST,
        sha256=sha,
        example_count=5,
        licence_id=licence,
        provider_id="acme",
    )


# (base licence, data licences, adapter licence) -> None (allowed) or the element named in the 400
RULES: dict[str, tuple[str, tuple[str, ...], str, str | None]] = {
    "permissive everywhere": ("apache-2.0", ("cc-by-4.0", "mit"), "apache-2.0", None),
    "NC data, NC adapter": ("apache-2.0", ("cc-by-nc-4.0",), "cc-by-nc-4.0", None),
    "NC data, commercial adapter": ("apache-2.0", ("cc-by-4.0", "cc-by-nc-4.0"), "mit", "dataset 'd1'"),
    "NC base, commercial adapter": ("cc-by-nc-4.0", (), "apache-2.0", "model 'base'"),
    "share-alike data, same licence": ("apache-2.0", ("cc-by-sa-4.0",), "cc-by-sa-4.0", None),
    "share-alike data, other licence": ("apache-2.0", ("cc-by-sa-4.0",), "cc-by-4.0", "dataset 'd0'"),
    "share-alike data, NC adapter": ("apache-2.0", ("cc-by-sa-4.0",), "cc-by-nc-4.0", "dataset 'd0'"),
    "openrail base, openrail adapter": ("openrail-m", (), "openrail-m", None),
    "openrail base, restrictions dropped": ("openrail-m", (), "apache-2.0", "model 'base'"),
    "capped data, cap dropped": ("apache-2.0", ("cap-1k",), "apache-2.0", "dataset 'd0'"),
    "capped data, capped adapter": ("apache-2.0", ("cap-1k",), "cap-1k", None),
}


@pytest.mark.parametrize("rule", RULES.values(), ids=RULES.keys())
def test_derived_licence_rules(s: Session, rule: tuple[str, tuple[str, ...], str, str | None]) -> None:
    base_lic, data_lics, own, culprit = rule
    base = models.add_model(
        s,
        name="base",
        kind="base",
        task="embedding",
        artifact_digest=DIGEST,
        licence_id=base_lic,
        author_id="acme",
    )
    data = [_dataset(s, f"d{i}", lic) for i, lic in enumerate(data_lics)]
    if culprit is None:
        check_derived_licence(s, name="tuned", licence_id=own, base=base, datasets=data)
        return
    with pytest.raises(InvalidInput) as e:
        check_derived_licence(s, name="tuned", licence_id=own, base=base, datasets=data)
    assert e.value.status == 400 and e.value.code == "license_too_permissive"
    assert f"cannot register 'tuned' under {own}: its {culprit}" in e.value.message


@pytest.fixture(scope="module")
def tiny_bert_and_lora(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny random BERT base and a real PEFT LoRA adapter for it (nothing downloaded)."""
    from peft import LoraConfig, get_peft_model
    from transformers import BertModel

    from constellation.testing.tiny_bert import save_tiny_bert

    base_dir = tmp_path_factory.mktemp("bases") / "tiny-bert"
    save_tiny_bert(base_dir, vocab=64, layers=1, heads=2, positions=32)
    lora = get_peft_model(BertModel.from_pretrained(base_dir), LoraConfig(r=2, target_modules=["query"]))
    lora_dir = tmp_path_factory.mktemp("adapters") / "tiny-lora"
    lora.save_pretrained(str(lora_dir))
    return base_dir, lora_dir


def test_register_adapter_applies_the_rules(
    s: Session, platform: Platform, tiny_bert_and_lora: tuple[Path, Path], tmp_path: Path
) -> None:
    base_dir, lora_dir = tiny_bert_and_lora
    service.register_base(
        s,
        platform.store,
        src=base_dir,
        name="tiny-bert",
        task="embedding",
        author="acme",
        licence="apache-2.0",
    )
    f = tmp_path / "nc.jsonl"
    f.write_text('{"text": "a"}\n{"text": "b"}\n')
    service.register_dataset(
        s, platform.store, src=f, name="nc-data", licence="cc-by-nc-4.0", provider="acme"
    )

    def register(licence: str) -> models.Model:
        return service.register_adapter(
            s,
            platform.store,
            src=lora_dir,
            name="tuned",
            base="tiny-bert",
            author="acme",
            licence=licence,
            datasets=[("nc-data", None)],
        )

    with pytest.raises(InvalidInput, match=r"its dataset 'nc-data' is under cc-by-nc-4\.0"):
        register("apache-2.0")
    assert not any(m.name == "tuned" for m in models.list_models(s, all_tenants=True))
    m = register("cc-by-nc-4.0")
    assert m.licence_id == "cc-by-nc-4.0" and [d.name for d, _ in models.lineage(s, model=m).datasets] == [
        "nc-data"
    ]
