"""The built wheel, installed into a fresh venv, serves from a directory outside the checkout:
`make wheel-test` (part of `make test`). Not a pytest module: it builds and installs for minutes."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
# The dashboard's charting library is not in git (npm installs it); shipped when present.
ECHARTS = ("dist/echarts.min.js", "LICENSE", "NOTICE")
CHARTS = "src/constellation/web/node_modules/echarts/dist/echarts.min.js"
SERVE_TIMEOUT_S = 120


def run(*cmd: str | Path, cwd: Path, env: dict[str, str] | None = None) -> str:
    done = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{' '.join(map(str, cmd))} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done.stdout


def source_copy(into: Path) -> Path:
    """What the wheel is built from, copied: setuptools' build/ folder in the checkout could
    carry stale files of an earlier build into the wheel."""
    junk = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "node_modules")
    shutil.copytree(ROOT / "src", into / "src", ignore=junk)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, into / name)
    echarts = Path("src/constellation/web/node_modules/echarts")
    for name in ECHARTS:
        if (ROOT / echarts / name).is_file():
            (into / echarts / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(ROOT / echarts / name, into / echarts / name)
    return into


def install(work: Path) -> Path:
    """A fresh venv holding the wheel and its dependencies (the `torch` pin named as `make install`
    names it, so that pip takes the CPU wheel); its bin folder."""
    src = source_copy(work / "source")
    run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", work / "dist", src, cwd=work)
    wheel = next((work / "dist").glob("constellation-*.whl"))
    run(sys.executable, "-m", "venv", work / "venv", cwd=work)
    # --no-compile: byte-compiling torch and transformers would be most of the install's time.
    pip = work / "venv" / "bin" / "pip"
    run(pip, "install", "-q", "--no-compile", "torch==2.13.0", wheel, cwd=work)
    return work / "venv" / "bin"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def check_install(bin_dir: Path, cwd: Path, env: dict[str, str]) -> None:
    """The package comes from the venv; the demo's data and the migrations ship in it; serving's
    dependencies leave sentence-transformers out (tests and benchmarks only)."""
    probe = """
import importlib.util, json, constellation
from constellation import migrations
from constellation.finetune.demo import DEMO_DIR
print(json.dumps({
    "package": constellation.__file__,
    "demo": (DEMO_DIR / "demo.yaml").is_file(),
    "env": (migrations.SCRIPTS / "env.py").is_file(),
    "sentence_transformers": importlib.util.find_spec("sentence_transformers") is not None,
}))
"""
    found = json.loads(run(bin_dir / "python", "-c", probe, cwd=cwd, env=env))
    assert Path(found["package"]).is_relative_to(bin_dir.parent), found
    assert found["demo"] and found["env"], found
    assert not found["sentence_transformers"], found
    run(bin_dir / "constellation", "demo", "--help", cwd=cwd, env=env)


def check_serving(bin_dir: Path, cwd: Path, env: dict[str, str], charts: bool) -> None:
    """A tenant and key on the fresh SQLite database (its first use migrates it), then `serve`:
    alive, /v1/models answers the key, and the dashboard's page and scripts are served (the
    charting library when the checkout has it to ship)."""
    run(bin_dir / "constellation", "tenants", "add", "wheel", cwd=cwd, env=env)
    created = json.loads(
        run(bin_dir / "constellation", "keys", "create", "--tenant", "wheel", "--json", cwd=cwd, env=env)
    )
    port = free_port()
    log = (cwd / "serve.log").open("w")
    server = subprocess.Popen(
        [bin_dir / "constellation", "serve", "--port", str(port)], cwd=cwd, env=env, stdout=log, stderr=log
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVE_TIMEOUT_S
        while True:
            if server.poll() is not None or time.monotonic() > deadline:
                sys.exit(f"constellation serve did not come up:\n{(cwd / 'serve.log').read_text()}")
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.5)
        models = httpx.get(f"{url}/v1/models", headers={"Authorization": f"Bearer {created['key']}"})
        assert models.status_code == 200 and models.json()["object"] == "list", models.text
        page = httpx.get(f"{url}/")
        assert page.status_code == 200 and "<html" in page.text.lower(), page.text[:200]
        assert httpx.get(f"{url}/static/app.js").status_code == 200
        if charts:
            assert httpx.get(f"{url}/static/lib/echarts.min.js").status_code == 200
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


def main() -> None:
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="constellation-wheel-") as tmp:
        work = Path(tmp)
        bin_dir = install(work)
        cwd = work / "elsewhere"
        cwd.mkdir()
        # Nothing of the checkout: no PYTHONPATH, no editable install, a data dir of its own.
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("PYTHON", "CONSTELLATION_", "VIRTUAL_ENV"))
        }
        env |= {
            "CONSTELLATION_DATA_DIR": str(cwd / "data"),
            "CONSTELLATION_ENGINE__ENCODER_PROCESS": "false",  # no model to serve: spare the workers
        }
        check_install(bin_dir, cwd, env)
        check_serving(bin_dir, cwd, env, charts=(ROOT / CHARTS).is_file())
    print(f"wheel test passed in {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
