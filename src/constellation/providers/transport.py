"""A lean HTTP/1.1 transport for upstream calls: keep-alive connections on asyncio streams,
behind httpx's transport interface (requests, responses, errors and streaming stay httpx's).

httpcore's pool and anyio's socket wrappers cost milliseconds of CPU per request on a small
machine (they scan the pool and query the socket on every request); a proxy's hop must cost far
less than the upstream's answer. This one writes the request in one call and parses the head
and body (Content-Length, chunked, or until close) itself."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from typing import Any

import httpx

Key = tuple[str, str, int]  # scheme, host, port
Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]
READ_CHUNK = 65536


class LeanTransport(httpx.AsyncBaseTransport):
    def __init__(self, *, max_idle: int = 256) -> None:
        self._idle: dict[Key, list[Conn]] = {}
        self._max_idle = max_idle
        self._ssl: ssl.SSLContext | None = None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        timeouts: dict[str, float | None] = request.extensions.get("timeout", {})
        url = request.url
        key = (url.scheme, url.host, url.port or (443 if url.scheme == "https" else 80))
        wire = _encode(request)
        for attempt in (0, 1):
            conn, reused = await self._connection(key, timeouts.get("connect"))
            try:
                conn[1].write(wire)
                # asyncio.timeout, not wait_for: no task per await on the hot path
                async with asyncio.timeout(timeouts.get("write")):
                    await conn[1].drain()
                async with asyncio.timeout(timeouts.get("read")):
                    status, reason, headers = await _read_head(conn[0])
            except TimeoutError:
                conn[1].close()
                raise httpx.ReadTimeout("the upstream did not answer in time", request=request) from None
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
                conn[1].close()
                if reused and attempt == 0:
                    continue  # a keep-alive connection the upstream had closed: once more, fresh
                raise httpx.RemoteProtocolError(
                    f"upstream connection failed: {exc!r}", request=request
                ) from None
            body = _Body(self, key, conn, headers, timeouts.get("read"), request)
            return httpx.Response(
                status,
                headers=headers,
                stream=body,
                extensions={"reason_phrase": reason, "http_version": b"HTTP/1.1"},
            )
        raise AssertionError("unreachable")

    async def _connection(self, key: Key, timeout: float | None) -> tuple[Conn, bool]:
        idle = self._idle.get(key)
        while idle:
            conn = idle.pop()
            if not conn[0].at_eof() and not conn[1].is_closing():
                return conn, True
            conn[1].close()
        scheme, host, port = key
        tls = self._context() if scheme == "https" else None
        try:
            opened = await asyncio.wait_for(
                asyncio.open_connection(host, port, ssl=tls, server_hostname=host if tls else None), timeout
            )
        except TimeoutError:
            raise httpx.ConnectTimeout(f"could not connect to {host}:{port} in time") from None
        except OSError as exc:
            raise httpx.ConnectError(f"could not connect to {host}:{port}: {exc.strerror or exc}") from None
        return opened, False

    def _context(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = ssl.create_default_context()
        return self._ssl

    def release(self, key: Key, conn: Conn) -> None:
        idle = self._idle.setdefault(key, [])
        if len(idle) < self._max_idle:
            idle.append(conn)
        else:
            conn[1].close()

    async def aclose(self) -> None:
        for idle in self._idle.values():
            for _, writer in idle:
                writer.close()
        self._idle.clear()


def _encode(request: httpx.Request) -> bytes:
    body = request.content
    url = request.url
    lines = [
        f"{request.method} {url.raw_path.decode('ascii')} HTTP/1.1",
        f"Host: {url.netloc.decode('ascii')}",
    ]
    for k, v in request.headers.items():
        if "\r" in v or "\n" in v:  # e.g. a key read from a file with a stray line break
            raise httpx.LocalProtocolError(f"header {k} holds a line break", request=request)
        if k.lower() not in ("host", "content-length"):
            lines.append(f"{k}: {v}")
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
    while True:
        head = await reader.readuntil(b"\r\n\r\n")
        first, *rest = head[:-4].split(b"\r\n")
        version, status, *reason = first.split(b" ", 2)
        if not version.startswith(b"HTTP/1."):
            raise ValueError(f"not an HTTP/1.x answer: {first[:80]!r}")
        code = int(status)
        if code >= 200 or code == 101:
            break  # 1xx interim answers are skipped
    headers = [(k.strip(), v.strip()) for k, _, v in (line.partition(b":") for line in rest)]
    return code, reason[0] if reason else b"", headers


class _Body(httpx.AsyncByteStream):
    """A response body read off the connection; the connection goes back to the pool once the
    body has been read to its end (and the upstream did not ask to close it)."""

    def __init__(
        self,
        transport: LeanTransport,
        key: Key,
        conn: Conn,
        headers: list[tuple[bytes, bytes]],
        timeout: float | None,
        request: httpx.Request,
    ) -> None:
        self._transport, self._key, self._conn, self._timeout, self._request = (
            transport,
            key,
            conn,
            timeout,
            request,
        )
        fields = {k.lower(): v for k, v in headers}
        self._chunked = b"chunked" in fields.get(b"transfer-encoding", b"").lower()
        length = fields.get(b"content-length")
        self._length = int(length) if length is not None and not self._chunked else None
        self._reusable = fields.get(b"connection", b"").lower() != b"close" and (
            self._chunked or self._length is not None
        )
        self._done = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for piece in self._pieces():
                yield piece
        except TimeoutError:
            raise httpx.ReadTimeout("the upstream stopped sending", request=self._request) from None
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
            raise httpx.RemoteProtocolError(
                f"the upstream closed the connection mid-answer: {exc!r}", request=self._request
            ) from None
        self._done = True

    async def _pieces(self) -> AsyncIterator[bytes]:
        reader = self._conn[0]
        if self._chunked:
            while True:
                size = int((await self._read(reader.readuntil(b"\r\n"))).split(b";")[0], 16)
                if size == 0:
                    while await self._read(reader.readuntil(b"\r\n")) != b"\r\n":
                        pass  # trailers
                    return
                data = await self._read(reader.readexactly(size + 2))
                yield data[:-2]
        elif self._length is not None:
            left = self._length
            while left:
                data = await self._read(reader.read(min(left, READ_CHUNK)))
                if not data:
                    raise asyncio.IncompleteReadError(b"", left)
                left -= len(data)
                yield data
        else:
            while data := await self._read(reader.read(READ_CHUNK)):
                yield data

    async def _read(self, op: Any) -> Any:
        async with asyncio.timeout(self._timeout):
            return await op

    async def aclose(self) -> None:
        if self._conn is None:
            return
        conn, self._conn = self._conn, None  # type: ignore[assignment]
        if self._done and self._reusable:
            self._transport.release(self._key, conn)
        else:
            conn[1].close()  # unread body: the connection cannot carry another request
