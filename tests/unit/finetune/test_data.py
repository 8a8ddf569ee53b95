"""JSONL validation: each kind of bad input is refused with its line number; duplicates counted."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import pytest

from constellation.errors import InvalidInput
from constellation.finetune.data import (
    ChatExample,
    PromptExample,
    TextExample,
    load_jsonl,
    load_many,
    weights_by_count,
)


def _write(path: Path, rows: Sequence[object]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def _rows(n: int, labels: tuple[str, ...] = ("a", "b")) -> list[object]:
    return [{"text": f"example {i}", "label": labels[i % len(labels)]} for i in range(n)]


def test_valid_file_gives_examples_labels_and_sha(tmp_path: Path) -> None:
    path = _write(tmp_path / "d.jsonl", _rows(12))
    ds = load_jsonl(path, "classification")
    assert ds.n_examples == 12 and ds.labels == ("a", "b") and ds.duplicates_dropped == 0
    assert ds.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert ds.examples[0] == TextExample("example 0", "a")


@pytest.mark.parametrize(
    ("bad", "expected"),
    [
        ("{not json", "line 3: not valid JSON"),
        ("[1, 2]", "line 3: each line must be a JSON object"),
        ('{"label": "a"}', 'line 3: needs a non-empty string "text"'),
        ('{"text": "   ", "label": "a"}', 'line 3: needs a non-empty string "text"'),
        ('{"text": "hello"}', 'line 3: needs a "label"'),
    ],
)
def test_malformed_line_is_reported_with_its_number(tmp_path: Path, bad: str, expected: str) -> None:
    rows = _rows(12)
    rows.insert(2, bad)
    with pytest.raises(InvalidInput) as err:
        load_jsonl(_write(tmp_path / "d.jsonl", rows), "classification")
    assert expected in err.value.message


def test_many_problems_are_listed_up_to_ten(tmp_path: Path) -> None:
    rows = _rows(12) + ["oops"] * 14
    with pytest.raises(InvalidInput) as err:
        load_jsonl(_write(tmp_path / "d.jsonl", rows), "classification")
    assert "14 invalid line(s)" in err.value.message
    assert err.value.message.count("not valid JSON") == 10
    assert "and 4 more" in err.value.message


def test_unknown_label_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path / "d.jsonl", _rows(12, ("a", "b", "c")))
    with pytest.raises(InvalidInput) as err:
        load_jsonl(path, "classification", allowed_labels=["a", "b"])
    assert "unknown label 'c'" in err.value.message and "line 3" in err.value.message


def test_single_class_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="single label"):
        load_jsonl(_write(tmp_path / "d.jsonl", _rows(12, ("a",))), "classification")


def test_too_few_examples_counts_after_dedup(tmp_path: Path) -> None:
    rows = _rows(6) + _rows(6)  # 6 distinct examples, each twice
    with pytest.raises(InvalidInput, match=r"6 example.*after dropping 6 exact duplicate"):
        load_jsonl(_write(tmp_path / "d.jsonl", rows), "classification", min_examples=10)


def test_exact_duplicates_are_dropped_and_counted(tmp_path: Path) -> None:
    rows = _rows(12) + _rows(3) + [{"text": "example 0", "label": "b"}]  # same text, other label: kept
    ds = load_jsonl(_write(tmp_path / "d.jsonl", rows), "classification")
    assert ds.duplicates_dropped == 3
    assert ds.n_examples == 13 == len(ds.examples)


def test_missing_file_and_blank_lines(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="does not exist"):
        load_jsonl(tmp_path / "nope.jsonl", "classification")
    ds = load_jsonl(_write(tmp_path / "d.jsonl", [*_rows(6), "", *_rows(12)[6:], "  "]), "classification")
    assert ds.n_examples == 12


def test_causal_formats(tmp_path: Path) -> None:
    chat = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ahoy"}]}
    rows = [{"prompt": f"p{i}", "completion": f"c{i}"} for i in range(5)] + [chat]
    ds = load_jsonl(_write(tmp_path / "d.jsonl", rows), "causal-lm", min_examples=6)
    assert ds.labels == () and ds.examples[0] == PromptExample("p0", "c0")
    assert ds.examples[-1] == ChatExample((("user", "hi"), ("assistant", "ahoy")))


@pytest.mark.parametrize(
    ("bad", "expected"),
    [
        ({"messages": []}, "non-empty list"),
        ({"messages": [{"role": "robot", "content": "x"}]}, 'needs "role"'),
        ({"messages": [{"role": "user", "content": "x"}]}, "at least one assistant message"),
        ({"prompt": "x"}, '"completion"'),
    ],
)
def test_causal_malformed(tmp_path: Path, bad: dict[str, object], expected: str) -> None:
    rows: list[object] = [{"prompt": f"p{i}", "completion": f"c{i}"} for i in range(10)] + [bad]
    with pytest.raises(InvalidInput) as err:
        load_jsonl(_write(tmp_path / "d.jsonl", rows), "causal-lm")
    assert "line 11" in err.value.message and expected in err.value.message


def test_several_files_weights_by_count(tmp_path: Path) -> None:
    only_a = _write(tmp_path / "a.jsonl", [{"text": f"a {i}", "label": "a"} for i in range(6)])
    only_b = _write(tmp_path / "b.jsonl", [{"text": f"b {i}", "label": "b"} for i in range(18)])
    sets = load_many([only_a, only_b], "classification")  # each single-class; the union is not
    assert [s.n_examples for s in sets] == [6, 18]
    assert weights_by_count(sets) == [0.25, 0.75]
    with pytest.raises(InvalidInput, match="single label"):
        load_many([only_a], "classification", min_examples=1)
