"""Model-card front matter parsing: HF's str-or-list fields, custom licences, broken YAML.

A bad card never blocks an import; it yields the text without metadata.
"""

from __future__ import annotations

from pathlib import Path

from constellation.artifacts import ModelCard, parse_card, read_card


def test_front_matter_fields_are_normalised() -> None:
    card = parse_card(
        "---\nlicense: apache-2.0\nbase_model: [org/base-a, org/base-b]\n"
        "datasets: squad\ntags:\n- a\n- b\n---\n\n# Title\nbody\n"
    )
    assert card == ModelCard(
        license="apache-2.0",
        base_model="org/base-a",
        datasets=("squad",),
        tags=("a", "b"),
        text="# Title\nbody",
    )


def test_custom_licence_uses_license_name() -> None:
    assert parse_card("---\nlicense: other\nlicense_name: acme-1.0\n---\n").license == "acme-1.0"


def test_no_front_matter_keeps_text_only() -> None:
    assert parse_card("# Just text\n") == ModelCard(text="# Just text\n")


def test_broken_yaml_is_ignored_not_fatal() -> None:
    card = parse_card("---\nlicense: [unclosed\n---\nbody")
    assert (card.license, card.text) == (None, "body")


def test_unterminated_front_matter_is_text() -> None:
    doc = "---\nlicense: mit\n"
    assert parse_card(doc) == ModelCard(text=doc)


def test_read_card_without_readme_is_none(tmp_path: Path) -> None:
    assert read_card(tmp_path) is None
