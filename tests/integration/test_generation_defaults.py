"""A model's generation_config.json sets the sampling defaults of requests that leave them out:
with `temperature: 0` there, two unseeded requests give the same (greedy) answer, while a request
that sets its own temperature samples as asked."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from tests.integration.conftest import Api

pytestmark = pytest.mark.anyio


async def _answer(api: Api, key: dict[str, str], **extra: object) -> str:
    body = {"model": "greedy-llama", "prompt": "hello there", "max_tokens": 12, **extra}
    r = await api.client.post("/v1/completions", headers=key, json=body)
    assert r.status_code == 200, r.text
    return str(r.json()["choices"][0]["text"])


async def test_generation_config_defaults_apply_only_to_what_the_request_omits(
    api: Api, lm_dirs: tuple[Path, Path], tmp_path: Path
) -> None:
    base = shutil.copytree(lm_dirs[0], tmp_path / "greedy-llama")
    (base / "generation_config.json").write_text(json.dumps({"temperature": 0.0}))
    r = await api.register(base, name="greedy-llama", task="causal-lm", author="lab")
    assert r.status_code == 201, r.text
    key = api.key("acme")
    omitted = {await _answer(api, key) for _ in range(3)}
    assert len(omitted) == 1  # greedy, as the model's generation_config says
    sampled = {await _answer(api, key, temperature=2.0) for _ in range(4)}
    assert len(sampled) > 1  # the request's own temperature wins
    assert omitted == {await _answer(api, key, temperature=0)}
