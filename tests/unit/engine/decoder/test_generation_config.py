"""A model directory's generation_config.json: its EOS ids stop generation and its sampling
values fill what a request leaves out, never what the request says."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from constellation.engine.decoder.sampling import SamplingDefaults, SamplingParams
from constellation.engine.decoder.tokens import LMTokenizer
from constellation.errors import InvalidInput
from constellation.testing.toy_lm import save_random_lm


@pytest.fixture(scope="module")
def lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_random_lm(tmp_path_factory.mktemp("gen-config") / "lm", "llama", seed=1)


def _write(path: Path, cfg: object) -> None:
    (path / "generation_config.json").write_text(json.dumps(cfg))


def test_eos_ids_and_defaults_come_from_generation_config(lm: Path) -> None:
    config_eos = json.loads((lm / "config.json").read_text())["eos_token_id"]
    _write(lm, {"eos_token_id": [7, 9], "temperature": 0.2, "top_p": 0.9, "top_k": 40})
    tok = LMTokenizer.load(lm)
    assert {7, 9, config_eos} <= tok.eos_ids
    assert tok.defaults == SamplingDefaults(temperature=0.2, top_p=0.9, top_k=40)


def test_defaults_fill_only_what_the_request_left_out() -> None:
    defaults = SamplingDefaults(temperature=0.2, top_p=0.9, top_k=40)
    omitted = SamplingParams(temperature=1.0, top_p=1.0, unset=frozenset({"temperature", "top_p", "top_k"}))
    assert (lambda p: (p.temperature, p.top_p, p.top_k, p.unset))(defaults.apply(omitted)) == (
        0.2,
        0.9,
        40,
        frozenset(),
    )
    explicit = SamplingParams(temperature=1.0, top_p=1.0, top_k=0, unset=frozenset({"top_k"}))
    applied = defaults.apply(explicit)
    assert (applied.temperature, applied.top_p, applied.top_k) == (1.0, 1.0, 40)


def test_out_of_range_or_missing_values_fall_back_to_openai_defaults(lm: Path) -> None:
    assert (
        SamplingDefaults.from_generation_config({"temperature": 7, "top_p": 0, "top_k": -3})
        == SamplingDefaults()
    )
    (lm / "generation_config.json").unlink()
    assert LMTokenizer.load(lm).defaults == SamplingDefaults()


def test_a_broken_generation_config_is_a_clear_error(lm: Path) -> None:
    (lm / "generation_config.json").write_text("{not json")
    with pytest.raises(InvalidInput, match=r"generation_config\.json"):
        LMTokenizer.load(lm)
    (lm / "generation_config.json").unlink()
