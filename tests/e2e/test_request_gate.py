"""The gate on a real socket (uvicorn in a thread): a declared-huge or growing body is answered
with 413, a missing or unknown key with 401, while the client still holds most of the body."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import uvicorn
from tests.e2e.conftest import free_port

from constellation.api.app import create_app
from constellation.api.state import state_of
from constellation.config import Settings
from constellation.registry import tenants

LIMIT = 64 * 1024
UPLOAD_LIMIT = 1024 * 1024
HUGE = 200 * 1024**2


@dataclass
class Live:
    port: int
    key: str


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("gate"), max_body_bytes=LIMIT, max_upload_body_bytes=UPLOAD_LIMIT
    )
    app = create_app(settings)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    with state_of(app).platform.db.session() as s:
        tenants.add_tenant(s, id="acme", name="acme")
        key = tenants.create_key(s, tenant_id="acme", scopes=["inference"]).secret
    yield Live(port=port, key=key)
    server.should_exit = True
    thread.join(timeout=30)


def exchange(port: int, head: str, body_part: bytes) -> tuple[int, dict[str, str], dict[str, object]]:
    """Send the request line, headers and the first bytes of a body; read the whole answer
    (the server closes the connection after it). A server that waits for the rest times out."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(head.replace("\n", "\r\n").encode() + b"\r\n" + body_part)
        data = b""
        try:
            while chunk := s.recv(65536):
                data += chunk
        except ConnectionResetError:
            pass  # the unread part of our body made the close a reset; the answer came first
    raw_head, _, body = data.partition(b"\r\n\r\n")
    lines = raw_head.decode().split("\r\n")
    headers = {name.lower(): value for name, _, value in (line.partition(": ") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, json.loads(body)


def post(path: str, *, key: str | None, length: int | None) -> str:
    lines = [f"POST {path} HTTP/1.1", "Host: test", "Content-Type: application/json", "Connection: close"]
    lines.append(f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked")
    if key is not None:
        lines.append(f"Authorization: Bearer {key}")
    return "\n".join(lines) + "\n"


def test_declared_huge_body_is_413_before_it_is_read(live: Live) -> None:
    status, headers, body = exchange(
        live.port, post("/v1/embeddings", key=live.key, length=HUGE), b"{" * 1024
    )
    assert status == 413
    assert body["error"]["code"] == "request_too_large"  # type: ignore[index]
    assert str(LIMIT) in body["error"]["message"]  # type: ignore[index]
    assert headers["connection"] == "close"


@pytest.mark.parametrize("key", [None, "cst_nope_nope", "Basic abc"])
def test_unauthenticated_huge_body_is_401_before_it_is_read(live: Live, key: str | None) -> None:
    head = post("/v1/embeddings", key=key, length=HUGE)
    if key == "Basic abc":
        head = head.replace("Bearer Basic", "Basic")
    status, headers, body = exchange(live.port, head, b"{" * 1024)
    assert status == 401
    assert body["error"]["type"] == "authentication_error"  # type: ignore[index]
    assert headers["www-authenticate"] == "Bearer"


def test_chunked_body_is_cut_off_once_it_passes_the_limit(live: Live) -> None:
    chunk = b"x" * 16384
    part = (f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n") * (LIMIT // len(chunk) + 1)  # no last chunk
    status, _, body = exchange(live.port, post("/v1/embeddings", key=live.key, length=None), part)
    assert status == 413
    assert body["error"]["type"] == "invalid_request_error"  # type: ignore[index]


def test_finetune_uploads_get_the_larger_limit(live: Live) -> None:
    payload = json.dumps({"data": [{"filename": "a.jsonl", "content": "x" * (2 * LIMIT)}]}).encode()
    head = post("/api/finetunes", key=live.key, length=len(payload))
    status, _, body = exchange(live.port, head, payload)
    assert status == 400  # read in full and validated: the fields this body lacks
    assert body["error"]["param"] in {"base", "task", "name", "license"}  # type: ignore[index]


def test_small_body_still_served(live: Live) -> None:
    payload = b'{"model": "nope", "input": "hi"}'
    status, _, body = exchange(live.port, post("/v1/embeddings", key=live.key, length=len(payload)), payload)
    assert status == 404, body
