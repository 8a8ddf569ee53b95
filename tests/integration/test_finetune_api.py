"""The fine-tuning job API on a tiny random BERT: upload JSONL, poll to success, classify with
the new private adapter; bad data is a 400 with line numbers and registers nothing; cancel works.
A tenant credits only the contributors it owns, every field is checked before a job is queued,
uploads are deleted whatever happens and capped per tenant, and a clash reveals no private model."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest
from tests.integration.conftest import Api

from constellation.api.state import state_of
from constellation.economy import holds, ledger
from constellation.registry import models, tenants

pytestmark = pytest.mark.anyio


@pytest.fixture
def db_url(sqlite_url: str) -> str:
    return sqlite_url


def jsonl(n: int) -> str:
    rows = [{"text": f"refund my order number {i} please", "label": "refund"} for i in range(n)]
    rows += [{"text": f"the app crashes on screen {i}", "label": "bug"} for i in range(n)]
    return "".join(json.dumps(r) + "\n" for r in rows)


async def _setup(api: Api, tiny_bert: Path) -> dict[str, str]:
    """The tiny base (by contributor `lab`) and a key of tenant `acme`, which owns `acme-ml`."""
    r = await api.register(tiny_bert, name="tiny", author="lab")
    assert r.status_code == 201, r.text
    h = api.key("acme")
    await _link(api, "acme", "acme-ml")
    return h


async def _link(api: Api, tenant: str, contributor: str) -> None:
    c = {"id": contributor, "name": contributor, "kind": "organisation"}
    await api.client.post("/api/contributors", headers=api.admin, json=c)
    r = await api.client.put(f"/api/tenants/{tenant}/contributors/{contributor}", headers=api.admin)
    assert r.status_code == 200, r.text


def _uploads_left(api: Api) -> list[Path]:
    return list((api.platform.settings.data_dir / "tmp").glob("upload-*"))


async def _start(api: Api, h: dict[str, str], name: str, content: str, **over: object) -> httpx.Response:
    """POST a classification job on the tiny base with one uploaded file."""
    body = {
        "base": "tiny",
        "task": "classification",
        "name": name,
        "license": "mit",
        "data": [{"filename": "train.jsonl", "content": content}],
        **over,
    }
    return await api.client.post("/api/finetunes", headers=h, json=body)


async def _wait(api: Api, h: dict[str, str], job_id: str) -> dict:
    for _ in range(600):
        job = (await api.client.get(f"/api/finetunes/{job_id}", headers=h)).json()
        if job["status"] not in ("queued", "running"):
            return job
        await asyncio.sleep(0.2)
    raise AssertionError("job did not finish")


async def test_finetune_job_to_private_adapter(api: Api, tiny_bert: Path) -> None:
    h = await _setup(api, tiny_bert)
    r = await _start(api, h, "intent", jsonl(20), license="cc-by-4.0", epochs=2)
    assert r.status_code == 202, r.text
    job = await _wait(api, h, r.json()["id"])
    assert job["status"] == "succeeded", job
    assert job["result"]["labels"] == ["bug", "refund"] and "accuracy" in str(job["result"]["metrics"])
    model = (await api.client.get("/api/models/intent", headers=api.admin)).json()
    assert model["visibility"] == "private" and model["owner_tenant"] == "acme"
    assert model["author"] == "acme-ml"  # the tenant's only contributor, by default
    assert _uploads_left(api) == []  # the upload lives on as a data set, not as a file
    assert model["lineage"]["datasets"][0]["weight"] == 40
    out = await api.client.post(
        "/v1/classify", headers=h, json={"model": "intent", "input": "refund order 3"}
    )
    assert out.status_code == 200 and out.json()["data"][0]["label"] in ("bug", "refund")
    other = await api.client.post(
        "/v1/classify", headers=api.key("other"), json={"model": "intent", "input": "x"}
    )
    assert other.status_code == 404


async def test_malformed_data_is_400_with_line_numbers_and_registers_nothing(
    api: Api, tiny_bert: Path
) -> None:
    h = await _setup(api, tiny_bert)
    bad = jsonl(10) + "{not json\n" + json.dumps({"text": "no label"}) + "\n"
    r = await _start(api, h, "broken", bad)
    assert r.status_code == 400
    msg = r.json()["error"]["message"]
    assert "21" in msg and "22" in msg
    assert (await api.client.get("/api/datasets", headers=api.admin)).json() == []
    assert (await api.client.get("/api/models/broken", headers=api.admin)).status_code == 404
    assert _uploads_left(api) == []


async def test_cancel_registers_nothing(api: Api, tiny_bert: Path) -> None:
    h = await _setup(api, tiny_bert)
    r = await _start(api, h, "slow", jsonl(60), epochs=50)
    job_id = r.json()["id"]
    await api.client.post(f"/api/finetunes/{job_id}/cancel", headers=h)
    job = await _wait(api, h, job_id)
    assert job["status"] == "cancelled"
    assert (await api.client.get("/api/models/slow", headers=api.admin)).status_code == 404
    assert (await api.client.get("/api/datasets", headers=api.admin)).json() == []


async def test_public_adapter_needs_admin(api: Api, tiny_bert: Path) -> None:
    h = await _setup(api, tiny_bert)
    r = await _start(api, h, "pub", jsonl(10), visibility="public")
    assert r.status_code == 403


async def test_a_tenant_credits_only_contributors_it_owns(api: Api, tiny_bert: Path) -> None:
    h = await _setup(api, tiny_bert)
    someone_elses = await _start(api, h, "a1", jsonl(10), author="lab")
    assert someone_elses.status_code == 403, someone_elses.text
    err = someone_elses.json()["error"]
    assert (err["code"], err["param"]) == ("contributor_not_owned", "author")
    assert "constellation tenants link acme --contributor lab" in err["message"]
    unknown = await _start(api, h, "a2", jsonl(10), data_provider="made-up-org")
    assert unknown.status_code == 404 and unknown.json()["error"]["param"] == "data_provider"
    contributors = (await api.client.get("/api/contributors", headers=api.admin)).json()
    assert "made-up-org" not in {c["id"] for c in contributors}  # nothing created on the fly
    unlinked = await _start(api, api.key("newco"), "a3", jsonl(10))
    assert unlinked.status_code == 403 and unlinked.json()["error"]["code"] == "no_contributor"
    assert (await api.client.get("/api/finetunes", headers=api.admin)).json() == []
    assert _uploads_left(api) == []


async def test_link_routes(api: Api) -> None:
    api.key("acme")
    await _link(api, "acme", "acme-ml")
    again = await api.client.put("/api/tenants/acme/contributors/acme-ml", headers=api.admin)
    assert again.json()["created"] is False
    listed = await api.client.get("/api/tenants/acme/contributors", headers=api.key("acme"))
    assert [r["contributor"] for r in listed.json()] == ["acme-ml"]
    nobody = await api.client.put("/api/tenants/acme/contributors/nobody", headers=api.admin)
    assert nobody.status_code == 404
    gone = await api.client.delete("/api/tenants/acme/contributors/acme-ml", headers=api.admin)
    assert gone.status_code == 204
    assert (await api.client.get("/api/tenants/acme/contributors", headers=api.admin)).json() == []


@pytest.mark.parametrize(
    ("over", "param"),
    [
        ({"name": "Bad Name!"}, "name"),
        ({"name": "x" * 200}, "name"),
        ({"license": "no-such-licence"}, None),
        ({"rank": 0}, "rank"),
        ({"epochs": 10**6}, "epochs"),
        ({"seed": 2**80}, "seed"),
        ({"data": [{"filename": "..", "content": "{}"}]}, "data.0.filename"),
        ({"data": [{"filename": "../../etc/x.jsonl", "content": "{}"}]}, "data.0.filename"),
        ({"data": [{"filename": ".hidden", "content": "{}"}]}, "data.0.filename"),
    ],
)
async def test_every_field_is_checked_before_a_job_is_queued(
    api: Api, tiny_bert: Path, over: dict, param: str | None
) -> None:
    h = await _setup(api, tiny_bert)
    over = dict(over)
    r = await _start(api, h, over.pop("name", "ok-name"), jsonl(10), **over)
    assert r.status_code in (400, 404), r.text
    if param is not None:
        assert r.json()["error"]["param"] == param
    assert (await api.client.get("/api/finetunes", headers=h)).json() == []  # nothing trained
    assert _uploads_left(api) == []


async def test_uploads_are_capped_per_tenant(api: Api, tiny_bert: Path) -> None:
    h = await _setup(api, tiny_bert)
    data = jsonl(30)
    state_of(api.app).finetunes.uploads.cap = int(len(data) * 1.5)
    first = await _start(api, h, "first", data, epochs=50)  # holds its upload while it runs
    assert first.status_code == 202, first.text
    second = await _start(api, h, "second", data)
    assert second.status_code == 413 and "cancel" in second.json()["error"]["message"]
    other = api.key("other")
    await _link(api, "other", "other-ml")
    elsewhere = await _start(api, other, "third", data, epochs=1)
    assert elsewhere.status_code == 202, elsewhere.text  # another tenant's cap is its own
    await api.client.post(f"/api/finetunes/{first.json()['id']}/cancel", headers=h)
    await _wait(api, h, first.json()["id"])
    await _wait(api, other, elsewhere.json()["id"])
    assert _uploads_left(api) == []
    assert (await _start(api, h, "second", data, epochs=1)).status_code == 202  # released


async def test_a_name_clash_reveals_no_private_model(api: Api, tiny_bert: Path) -> None:
    """`secret` is another tenant's private base: naming it as the new adapter reads exactly like
    naming a public model, and as the base to train on exactly like naming a missing one."""
    h = await _setup(api, tiny_bert)
    with api.platform.db.session() as s:
        tiny = models.get_model(s, name="tiny")
        tenants.add_tenant(s, id="rival", name="rival")
        models.add_model(
            s, name="secret", kind="base", task="embedding", artifact_digest=tiny.artifact_digest,
            licence_id="mit", author_id="lab", visibility="private", owner_tenant_id="rival",
        )  # fmt: skip
    public = (await _start(api, h, "tiny", jsonl(10))).json()["error"]
    private = (await _start(api, h, "secret", jsonl(10))).json()["error"]
    assert private["message"] == public["message"].replace("tiny", "secret")
    assert private["code"] == "name_taken" and "embedding" not in private["message"]
    as_base = await _start(api, h, "mine", jsonl(10), base="secret")
    missing = await _start(api, h, "mine", jsonl(10), base="nowhere")
    assert as_base.status_code == missing.status_code == 404
    assert as_base.json()["error"]["message"] == missing.json()["error"]["message"].replace(
        "nowhere", "secret"
    )


async def test_a_job_is_billed_for_its_compute_and_shows_on_the_invoice(api: Api, tiny_bert: Path) -> None:
    h = await _setup(api, tiny_bert)
    r = await _start(api, h, "billed", jsonl(10), epochs=1)
    assert r.status_code == 202, r.text
    job = await _wait(api, h, r.json()["id"])
    assert job["status"] == "succeeded" and job["price_nanos"] > 0
    inv = (await api.client.get("/api/invoices", headers=h)).json()
    [line] = [ln for ln in inv["lines_by_model"] if ln["operation"] == "finetune"]
    assert line["model"] == "billed" and line["request_ids"] == [job["id"]]
    assert line["amount_nanos"] == job["price_nanos"] == inv["total_nanos"]
    roles = {ln["role"] for ln in inv["lines_by_artifact"]}
    assert roles == {"infra", "platform"}  # compute and the platform fee; no model terms
    with api.platform.db.session() as s:
        assert ledger.verify(s) == []
        assert ledger.balances(s)  # the charge landed in the ledger
    assert holds.held(api.platform.db, account_id="tenant:acme") == 0


async def test_a_job_is_admitted_against_the_spending_limit(api: Api, tiny_bert: Path) -> None:
    h = await _setup(api, tiny_bert)
    with api.platform.db.session() as s:
        ledger.set_limit(s, tenant_id="acme", prepaid=True)
        ledger.fund(s, tenant_id="acme", amount_nanos=1_000)  # far less than an hour of compute
    r = await _start(api, h, "unpaid", jsonl(10), epochs=1)
    assert r.status_code == 402, r.text
    assert r.json()["error"]["code"] == "insufficient_balance"
    assert _uploads_left(api) == []
    assert (await api.client.get("/api/finetunes", headers=h)).json() == []


async def test_a_job_past_its_time_limit_is_stopped_and_billed(api: Api, tiny_bert: Path) -> None:
    h = await _setup(api, tiny_bert)
    state_of(api.app).finetunes.max_s = 0.05
    r = await _start(api, h, "slow", jsonl(40), epochs=50)
    assert r.status_code == 202, r.text
    job = await _wait(api, h, r.json()["id"])
    assert job["status"] == "cancelled" and "finetune_max_seconds" in job["error"]
    assert job["price_nanos"] > 0
    assert (await api.client.get("/api/models/slow", headers=api.admin)).status_code == 404


async def test_an_upload_reuses_only_data_sets_the_tenant_may_see(
    api: Api, tiny_bert: Path, tmp_path: Path
) -> None:
    """Bytes matching another tenant's data set register a new one of the caller's own, so a job
    neither confirms that the data is on the platform nor names it; its own and an operator's
    (public) data sets are reused."""
    h = await _setup(api, tiny_bert)
    data = jsonl(10)
    acme = await _wait(api, h, (await _start(api, h, "acme-secret", data, epochs=1)).json()["id"])
    [theirs] = acme["result"]["datasets"]
    rival = api.key("rival")
    await _link(api, "rival", "rival-ml")
    probe = await _wait(api, rival, (await _start(api, rival, "probe", data, epochs=1)).json()["id"])
    assert probe["status"] == "succeeded", probe
    [mine] = probe["result"]["datasets"]
    assert (mine["name"], mine["created"], mine["sha256"]) == ("probe-train", True, theirs["sha256"])
    assert theirs["name"] not in json.dumps(probe)
    listed = {d["name"]: d for d in (await api.client.get("/api/datasets", headers=api.admin)).json()}
    assert (listed["probe-train"]["owner_tenant"], listed["probe-train"]["provider"]) == ("rival", "rival-ml")
    assert listed[theirs["name"]]["owner_tenant"] == "acme"
    again = await _wait(api, h, (await _start(api, h, "acme-again", data, epochs=1)).json()["id"])
    assert again["result"]["datasets"] == [{**theirs, "created": False}]  # its own is reused

    public = tmp_path / "public.jsonl"
    public.write_text(jsonl(12))
    body = {"name": "ops-intents", "path": str(public), "license": "mit", "provider": "lab"}
    assert (await api.client.post("/api/datasets", headers=api.admin, json=body)).status_code == 201
    job = await _wait(api, rival, (await _start(api, rival, "on-ops", jsonl(12), epochs=1)).json()["id"])
    assert [(d["name"], d["created"]) for d in job["result"]["datasets"]] == [("ops-intents", False)]
