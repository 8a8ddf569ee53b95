"""Load and validate fine-tuning data from JSONL: classification `{"text", "label"}`, causal LM
`{"prompt", "completion"}` or `{"messages": [...]}`. Bad data fails early, with line numbers.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from constellation.errors import InvalidInput

FinetuneTask = Literal["classification", "causal-lm"]
ROLES = ("system", "user", "assistant")
MIN_EXAMPLES = 10
MAX_REPORTED = 10


@dataclass(frozen=True, slots=True)
class TextExample:
    """One classification example."""

    text: str
    label: str


@dataclass(frozen=True, slots=True)
class PromptExample:
    """One causal-LM example; the loss is taken on `completion` only."""

    prompt: str
    completion: str


@dataclass(frozen=True, slots=True)
class ChatExample:
    """One chat; the loss is taken on the assistant turns only. Messages are (role, content)."""

    messages: tuple[tuple[str, str], ...]


Example = TextExample | PromptExample | ChatExample


@dataclass(frozen=True, slots=True)
class Dataset:
    """A validated data file: what the trainer consumes and what the registry records."""

    path: Path
    task: FinetuneTask
    examples: list[Example]
    sha256: str
    n_examples: int
    duplicates_dropped: int
    labels: tuple[str, ...]  # sorted; empty for causal-lm


class _Problems:
    """Collects per-line problems and raises them as one InvalidInput."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.items: list[str] = []

    def add(self, line: int, message: str) -> None:
        self.items.append(f"line {line}: {message}")

    def raise_if_any(self) -> None:
        if not self.items:
            return
        shown = "\n  ".join(self.items[:MAX_REPORTED])
        more = len(self.items) - MAX_REPORTED
        tail = f"\n  ... and {more} more" if more > 0 else ""
        raise InvalidInput(
            f"{self.path.name}: {len(self.items)} invalid line(s); fix them and retry "
            f"(nothing was registered):\n  {shown}{tail}",
            param="data",
        )


def _nonempty_str(record: dict[str, Any], key: str) -> str | None:
    value = record.get(key)
    return value if isinstance(value, str) and value.strip() else None


def _parse_text(record: dict[str, Any]) -> tuple[Example | None, str | None]:
    text, label = _nonempty_str(record, "text"), record.get("label")
    if text is None:
        return None, 'needs a non-empty string "text"'
    if isinstance(label, bool) or not isinstance(label, str | int) or str(label).strip() == "":
        return None, 'needs a "label" (a non-empty string)'
    return TextExample(text=text, label=str(label)), None


def _parse_messages(raw: Any) -> tuple[Example | None, str | None]:
    if not isinstance(raw, list) or not raw:
        return None, '"messages" must be a non-empty list of {"role", "content"} objects'
    messages: list[tuple[str, str]] = []
    for i, m in enumerate(raw):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            return None, f'messages[{i}] needs "role" in {list(ROLES)}'
        if not isinstance(m.get("content"), str) or not m["content"].strip():
            return None, f'messages[{i}] needs a non-empty string "content"'
        messages.append((m["role"], m["content"]))
    if not any(role == "assistant" for role, _ in messages):
        return None, "a chat needs at least one assistant message to learn from"
    return ChatExample(messages=tuple(messages)), None


def _parse_causal(record: dict[str, Any]) -> tuple[Example | None, str | None]:
    if "messages" in record:
        return _parse_messages(record["messages"])
    prompt, completion = record.get("prompt"), _nonempty_str(record, "completion")
    if not isinstance(prompt, str) or completion is None:
        return None, 'needs {"prompt": str, "completion": non-empty str} or {"messages": [...]}'
    return PromptExample(prompt=prompt, completion=completion), None


def _parse_line(line: str, task: FinetuneTask) -> tuple[Example | None, str | None]:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        return None, f"not valid JSON ({e.msg} at column {e.colno})"
    if not isinstance(record, dict):
        return None, "each line must be a JSON object"
    return _parse_text(record) if task == "classification" else _parse_causal(record)


def _read_lines(path: Path) -> tuple[bytes, list[str]]:
    if not path.is_file():
        raise InvalidInput(f"data file {path} does not exist; pass a path to a JSONL file", param="data")
    raw = path.read_bytes()
    try:
        return raw, raw.decode("utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise InvalidInput(f"{path.name} is not UTF-8 (byte {e.start}); re-encode it as UTF-8", param="data")


def _check_labels(
    parsed: list[tuple[int, Example]], allowed: Iterable[str] | None, problems: _Problems
) -> None:
    if allowed is None:
        return
    allowed_set = set(allowed)
    for line_no, ex in parsed:
        if isinstance(ex, TextExample) and ex.label not in allowed_set:
            problems.add(line_no, f"unknown label {ex.label!r}; allowed labels: {sorted(allowed_set)}")


def _dedup(examples: list[Example]) -> tuple[list[Example], int]:
    """Drop exact duplicates, keeping the first occurrence (order matters for reproducibility)."""
    seen: set[Example] = set()
    kept = [ex for ex in examples if not (ex in seen or seen.add(ex))]  # type: ignore[func-returns-value]
    return kept, len(examples) - len(kept)


def _load(path: Path, task: FinetuneTask, allowed_labels: Iterable[str] | None) -> Dataset:
    """Parse one file (no count checks): line problems raise, duplicates are dropped."""
    path = Path(path)
    raw, lines = _read_lines(path)
    problems = _Problems(path)
    parsed: list[tuple[int, Example]] = []
    for line_no, line in enumerate(lines, start=1):
        if not line.strip():
            continue  # blank lines (often a trailing newline) are harmless
        example, problem = _parse_line(line, task)
        if problem is not None:
            problems.add(line_no, problem)
        elif example is not None:
            parsed.append((line_no, example))
    _check_labels(parsed, allowed_labels, problems)
    problems.raise_if_any()
    examples, dropped = _dedup([ex for _, ex in parsed])
    return Dataset(
        path=path,
        task=task,
        examples=examples,
        sha256=hashlib.sha256(raw).hexdigest(),
        n_examples=len(examples),
        duplicates_dropped=dropped,
        labels=tuple(sorted({ex.label for ex in examples if isinstance(ex, TextExample)})),
    )


def _check_counts(
    name: str, task: FinetuneTask, examples: Sequence[Example], dropped: int, min_examples: int
) -> None:
    after = f" after dropping {dropped} exact duplicate(s)" if dropped else ""
    if len(examples) < min_examples:
        raise InvalidInput(
            f"{name} has {len(examples)} example(s){after}; at least {min_examples} are needed. "
            "Add more examples.",
            param="data",
        )
    labels = sorted({ex.label for ex in examples if isinstance(ex, TextExample)})
    if task == "classification" and len(labels) < 2:
        raise InvalidInput(
            f"{name} has a single label {labels}; a classifier needs examples of at least two labels.",
            param="data",
        )


def load_jsonl(
    path: Path,
    task: FinetuneTask,
    *,
    allowed_labels: Iterable[str] | None = None,
    min_examples: int = MIN_EXAMPLES,
) -> Dataset:
    """Parse and validate one JSONL file; raise one InvalidInput listing what to fix."""
    ds = _load(path, task, allowed_labels)
    _check_counts(ds.path.name, task, ds.examples, ds.duplicates_dropped, min_examples)
    return ds


def load_many(
    paths: Sequence[Path],
    task: FinetuneTask,
    *,
    allowed_labels: Iterable[str] | None = None,
    min_examples: int = MIN_EXAMPLES,
) -> list[Dataset]:
    """Load several files; the count and single-class checks apply to their union, since a
    file may hold one label only and still be useful next to the others."""
    if not paths:
        raise InvalidInput("no data file given; pass at least one JSONL file", param="data")
    allowed = list(allowed_labels) if allowed_labels is not None else None
    sets = [_load(Path(p), task, allowed) for p in paths]
    for s in sets:
        if s.n_examples == 0:
            raise InvalidInput(f"{s.path.name} holds no examples; remove it or fill it", param="data")
    merged = combined_examples(sets)
    dropped = sum(s.duplicates_dropped for s in sets) + sum(s.n_examples for s in sets) - len(merged)
    _check_counts(" + ".join(s.path.name for s in sets), task, merged, dropped, min_examples)
    return sets


def weights_by_count(datasets: Sequence[Dataset]) -> list[float]:
    """Lineage weight of each data set: its share of the examples (sums to 1)."""
    total = sum(d.n_examples for d in datasets)
    return [d.n_examples / total for d in datasets]


def combined_examples(datasets: Sequence[Dataset]) -> list[Example]:
    """All examples of several data sets, exact duplicates across files dropped."""
    return _dedup([ex for d in datasets for ex in d.examples])[0]
