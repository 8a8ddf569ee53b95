"""A real server: `constellation serve` in a subprocess on a free port, with its own data
dir, an admin key and an inference key created through the CLI beforehand. One such server
serves the whole session; tests that need an empty or specially configured one start their own."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

CLI = [sys.executable, "-m", "constellation.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    url: str
    env: dict[str, str]
    admin_key: str
    key: str
    proc: subprocess.Popen[bytes] | None = None
    port: int = 0
    log: Path = field(default_factory=Path)

    def cli(self, *args: str) -> str:
        """`constellation ARGS` against this server's data dir, run in this process: the same
        command as in a subprocess, without another interpreter importing torch first."""
        from typer.testing import CliRunner

        from constellation.cli import app

        env: dict[str, str | None] = {"CONSTELLATION_DB_URL": None, **self.env}
        out = CliRunner().invoke(app, list(args), env=env)
        assert out.exit_code == 0, f"{out.stderr}{out.exception!r}"
        return out.stdout

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [*CLI, "serve", "--port", str(self.port), "--log-level", "warning"],
            env=self.env,
            stdout=self.log.open("ab"),
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError("server did not become ready in 120 s")

    def stop(self, *, kill: bool = False) -> None:
        if self.proc is None:
            return
        if kill:
            self.proc.kill()
        else:
            self.proc.terminate()
        self.proc.wait(timeout=30)
        self.proc = None


def make_server(tmp: Path, extra_env: dict[str, str] | None = None) -> Server:
    port = free_port()
    env = {**os.environ, "CONSTELLATION_DATA_DIR": str(tmp / "data"), **(extra_env or {})}
    if "CONSTELLATION_DB_URL" not in (extra_env or {}):
        env.pop("CONSTELLATION_DB_URL", None)  # a developer's shell setting must not leak into the test
    srv = Server(
        url=f"http://127.0.0.1:{port}", env=env, admin_key="", key="", port=port, log=tmp / "server.log"
    )
    srv.cli("tenants", "add", "ops")
    srv.cli("tenants", "add", "acme")
    srv.admin_key = json.loads(srv.cli("keys", "create", "--tenant", "ops", "--scope", "admin", "--json"))[
        "key"
    ]
    srv.key = json.loads(srv.cli("keys", "create", "--tenant", "acme", "--json"))["key"]
    return srv


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = make_server(tmp_path_factory.mktemp("e2e"))
    srv.start()
    yield srv
    srv.stop()
