"""A lean HTTP/1.1 load generator for the serving benchmarks: keep-alive connections on raw
asyncio streams, every request encoded before the clock starts.

On a 2-core machine the client shares the cores with the server under test; a general-purpose
client (httpx spends about a millisecond of CPU per request) would take a good part of them and
understate every server alike. This one costs tens of microseconds per request, as wrk or oha
would, and checks every answer's status.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from typing import Any


class HttpError(RuntimeError):
    pass


def encode_post(host: str, path: str, headers: dict[str, str], body: dict[str, Any]) -> bytes:
    """One complete POST with a JSON body, as bytes on the wire."""
    payload = json.dumps(body).encode()
    head = [f"POST {path} HTTP/1.1", f"Host: {host}", "Content-Type: application/json",
            f"Content-Length: {len(payload)}", *(f"{k}: {v}" for k, v in headers.items())]  # fmt: skip
    return ("\r\n".join(head) + "\r\n\r\n").encode() + payload


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """Status and body of one response (Content-Length or chunked)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    fields = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:] if x)}
    if "content-length" in fields:
        return status, await reader.readexactly(int(fields["content-length"]))
    if fields.get("transfer-encoding", "").lower() == "chunked":
        parts = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            parts.append(await reader.readexactly(size + 2))
            if size == 0:
                return status, b"".join(p[:-2] for p in parts)
    raise HttpError(f"response without Content-Length or chunked body: {lines[0]}")


async def _worker(host: str, port: int, todo: list[bytes]) -> int:
    reader, writer = await asyncio.open_connection(host, port)
    done = 0
    try:
        while todo:
            writer.write(todo.pop())
            status, body = await _read_response(reader)
            if status != 200:
                raise HttpError(f"answered {status}: {body[:300].decode(errors='replace')}")
            done += 1
    finally:
        writer.close()
    return done


async def run_load(host: str, port: int, requests: Sequence[bytes], clients: int) -> float:
    """Send every request from `clients` keep-alive connections; returns requests per second."""
    todo = list(reversed(requests))
    start = time.perf_counter()
    done = sum(await asyncio.gather(*(_worker(host, port, todo) for _ in range(clients))))
    return done / (time.perf_counter() - start)
