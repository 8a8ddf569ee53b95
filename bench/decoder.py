"""Decoder serving with many adapters: our continuous batching against the peers a user would
pick (base alone, PEFT mixed-batch generate, HF generate one request at a time), side by side."""

from __future__ import annotations

import argparse
import asyncio
import itertools
import random
import statistics
import sys
import tempfile
import time
import timeit
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from constellation.config import EngineLimits
from constellation.engine.decoder.detokenizer import TextStream
from constellation.engine.decoder.engine import DecoderEngine
from constellation.engine.decoder.sampling import SamplingParams
from constellation.engine.decoder.sequence import Prepared
from constellation.engine.decoder.tokens import LMTokenizer
from constellation.engine.spec import AdapterSpec, BaseSpec
from constellation.testing.toy_lm import WORDS, save_random_adapters, save_random_lm


@dataclass(frozen=True, slots=True)
class Sizes:
    dim: int
    layers: int
    heads: int
    vocab_extra: int
    requests: int
    adapters: int
    rank: int
    new_tokens: int
    one_by_one: int  # requests timed for the one-at-a-time peer (its tok/s is a rate)


FULL = Sizes(
    dim=768,
    layers=12,
    heads=12,
    vocab_extra=8000,
    requests=32,
    adapters=16,
    rank=16,
    new_tokens=128,
    one_by_one=4,
)
TINY = Sizes(
    dim=64, layers=2, heads=4, vocab_extra=0, requests=8, adapters=4, rank=8, new_tokens=16, one_by_one=2
)
# About 1B parameters (TinyLlama-like widths), for a GPU: 18 layers of 2048, 16 heads, 8 KV heads.
ONE_B = Sizes(
    dim=2048,
    layers=18,
    heads=16,
    vocab_extra=32000,
    requests=32,
    adapters=16,
    rank=16,
    new_tokens=128,
    one_by_one=4,
)
SIZES = {"tiny": TINY, "full": FULL, "1b": ONE_B}
ROUNDS = 3  # ours and base alone, alternated, at full size on the CPU


def _const(path: Path) -> Callable[[], Path]:
    return lambda: path


def build(root: Path, s: Sizes) -> tuple[BaseSpec, list[AdapterSpec]]:
    base_dir = save_random_lm(
        root / "base", "llama", extra_words=s.vocab_extra, dim=s.dim, layers=s.layers, heads=s.heads, ctx=512
    )
    dirs = save_random_adapters(base_dir, {root / f"a{i}": i for i in range(s.adapters)}, rank=s.rank)
    adapters = [AdapterSpec(f"a{i}", "base", resolve=_const(d)) for i, d in enumerate(dirs)]
    return BaseSpec("base", "causal-lm", resolve=_const(base_dir)), adapters


def prompts(n: int) -> list[str]:
    rng = random.Random(0)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 24))) for _ in range(n)]


async def _one(engine: DecoderEngine, p: Prepared, marks: list[float], out: list[int] | None = None) -> int:
    n = 0
    async for d in engine.generate(p):
        marks.append(time.perf_counter())
        n += len(d.token_ids)
        if out is not None:
            out.extend(d.token_ids)
    return n


def run_engine(engine: DecoderEngine, work: list[Prepared], outs: list[list[int]] | None = None) -> float:
    """All requests at once; returns generated tokens per second (tokens per request to `outs`)."""
    sink = outs if outs is not None else [[] for _ in work]

    async def go() -> int:
        return sum(await asyncio.gather(*(_one(engine, p, [], o) for p, o in zip(work, sink, strict=True))))

    t0 = time.perf_counter()
    tokens = asyncio.run(go())
    return tokens / (time.perf_counter() - t0)


def run_poisson(engine: DecoderEngine, work: list[Prepared], rate: float) -> tuple[list[float], list[float]]:
    """Arrivals at `rate` req/s; returns TTFTs and inter-token gaps (seconds)."""
    rng = random.Random(1)
    marks: list[list[float]] = [[] for _ in work]
    starts: list[float] = []

    async def go() -> None:
        tasks = []
        for i, p in enumerate(work):
            starts.append(time.perf_counter())
            tasks.append(asyncio.create_task(_one(engine, p, marks[i])))
            await asyncio.sleep(rng.expovariate(rate))
        await asyncio.gather(*tasks)

    asyncio.run(go())
    ttft = [m[0] - s for m, s in zip(marks, starts, strict=True)]
    itl = [b - a for m in marks for a, b in itertools.pairwise(m)]
    return ttft, itl


def hf_models(base: BaseSpec, adapters: list[AdapterSpec], device: str) -> tuple[Any, Any]:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(base.resolve()), dtype=torch.float32)
    model = model.to(device).eval()
    peft = PeftModel.from_pretrained(model, str(adapters[0].resolve()), adapter_name=adapters[0].name)
    for a in adapters[1:]:
        peft.load_adapter(str(a.resolve()), adapter_name=a.name)
    return model, peft.eval()


def run_peft_batch(
    peft: Any, work: list[Prepared], names: list[str], new: int
) -> tuple[float, list[list[int]]]:
    """One static left-padded batch with PEFT's per-row `adapter_names`; tok/s and the tokens."""
    width = max(len(p.prompt_ids) for p in work)
    ids = torch.tensor([[1] * (width - len(p.prompt_ids)) + list(p.prompt_ids) for p in work])  # [B, S]
    mask = (
        torch.arange(width)[None, :] >= torch.tensor([width - len(p.prompt_ids) for p in work])[:, None]
    ).long()
    ids, mask = ids.to(peft.device), mask.to(peft.device)
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = peft.generate(
            input_ids=ids,
            attention_mask=mask,
            adapter_names=names,
            max_new_tokens=new,
            min_new_tokens=new,
            do_sample=False,
            pad_token_id=1,
        )
    tps = (out.shape[0] * (out.shape[1] - width)) / (time.perf_counter() - t0)
    return tps, out[:, width:].tolist()


def run_one_by_one(peft: Any, work: list[Prepared], names: list[str], new: int) -> float:
    tokens, t0 = 0, time.perf_counter()
    with torch.inference_mode():
        for p, name in zip(work, names, strict=True):
            peft.set_adapter(name)
            out = peft.generate(
                input_ids=torch.tensor([p.prompt_ids], device=peft.device),
                max_new_tokens=new,
                min_new_tokens=new,
                do_sample=False,
                pad_token_id=1,
            )
            tokens += out.shape[1] - len(p.prompt_ids)
    return tokens / (time.perf_counter() - t0)


def _pct(xs: list[float], q: float) -> float:
    return statistics.quantiles(xs, n=100, method="inclusive")[int(q) - 1] if len(xs) > 1 else xs[0]


def main(tiny: bool = False, size: str | None = None, device: str = "cpu", model: str | None = None) -> None:
    if model is not None:
        return _real_model(model, tiny)
    s = SIZES[size or ("tiny" if tiny else "full")]
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        base, adapters = build(Path(tmp), s)
        limits = EngineLimits(
            adapter_slots=s.adapters + 1,
            max_decode_seqs=s.requests,
            kv_cache_bytes=(4 << 30) if device != "cpu" else (1 << 30),
            base_model_bytes=64 << 30,  # one base, whatever its size
            device=device,
        )
        engine = DecoderEngine(limits)
        params = SamplingParams(max_tokens=s.new_tokens, temperature=0.0)
        texts = prompts(s.requests)
        chosen = [adapters[i % s.adapters] for i in range(s.requests)]
        work = [engine.prepare(base, a, prompt=t, params=params) for a, t in zip(chosen, texts, strict=True)]
        plain = [engine.prepare(base, None, prompt=t, params=params) for t in texts]
        warm = SamplingParams(max_tokens=2, temperature=0.0)
        # Warm-up: every adapter loaded into its slot and the real prompt lengths seen once.
        warmup = [(None, texts[0]), *zip(chosen, texts, strict=True)]
        run_engine(engine, [engine.prepare(base, a, prompt=t, params=warm) for a, t in warmup])
        ours_tokens: list[list[int]] = [[] for _ in work]
        ours = run_engine(engine, work, ours_tokens)
        base_only = run_engine(engine, plain)
        # (1) alternates ROUNDS times and keeps each side's best: on shared cores, drift then
        # hits both alike instead of deciding the ratio.
        for _ in range(ROUNDS - 1 if s is FULL else 0):
            ours = max(ours, run_engine(engine, work))
            base_only = max(base_only, run_engine(engine, plain))
        model, peft = hf_models(base, adapters, device)
        names = [a.name for a in chosen]
        peft_tps, peft_tokens = run_peft_batch(peft, work, names, s.new_tokens)
        # A check, not a speed: greedy tokens should agree with PEFT's (the tests check it exactly
        # on CPU; on a GPU, kernels that differ in the last bit may flip a near-tie late on).
        head = min(16, s.new_tokens)
        agree = sum(a[:head] == b[:head] for a, b in zip(ours_tokens, peft_tokens, strict=True))
        k = s.one_by_one
        single_tps = run_one_by_one(peft, work[:k], names[:k], s.new_tokens)
        capacity = ours / s.new_tokens  # requests per second
        rows = [
            ("tok/s, ours (mixed adapters)", f"{ours:.1f}", ""),
            ("(1) vs same workload on base alone", f"{ours / base_only:.2f}x", f"base {base_only:.1f} tok/s"),
            (
                "(2) vs PEFT mixed-batch generate",
                f"{ours / peft_tps:.2f}x",
                f"PEFT {peft_tps:.1f} tok/s; first {head} greedy tokens equal: {agree}/{len(work)} req",
            ),
            (
                "(3) vs HF generate one at a time",
                f"{ours / single_tps:.2f}x",
                f"HF {single_tps:.1f} tok/s, {k} req",
            ),
        ]
        for frac in (0.5, 0.9):
            ttft, itl = run_poisson(engine, work, frac * capacity)
            ms = [f"{_pct(xs, q) * 1e3:.1f}" for xs in (ttft, itl) for q in (50, 99)]
            rows.append(
                (
                    f"(4) Poisson {int(frac * 100)}% of capacity",
                    f"TTFT p50 {ms[0]} ms",
                    f"p99 {ms[1]} ms; ITL p50 {ms[2]} ms, p99 {ms[3]} ms",
                )
            )
        rows.append(detokenizer_row(engine.tokenizer(base), 64 if s is TINY else 512))
        engine.close()
    # PEFT injected its adapters into `model`: count the base's own weights apart from theirs.
    counts = [(n, p.numel()) for n, p in model.named_parameters()]
    base_m = sum(c for n, c in counts if "lora_" not in n) / 1e6
    lora_m = sum(c for n, c in counts if "lora_" in n) / 1e6
    where = (
        torch.cuda.get_device_name() if device.startswith("cuda") else f"{torch.get_num_threads()} threads"
    )
    print(
        f"decoder bench: llama {base_m:.0f}M params (+{lora_m:.0f}M in {s.adapters} adapters), fp32, "
        f"{s.requests} requests over {s.adapters} rank-{s.rank} adapters, {s.new_tokens} new tokens "
        f"each, {device} ({where})"
    )
    for name, value, note in rows:
        print(f"  {name:<38} {value:>18}  {note}")


def detokenizer_row(tok: LMTokenizer, n: int) -> tuple[str, str, str]:
    """(5) Streaming `n` tokens' text: the old full re-decode per token against the incremental
    decoder the engine uses (both hold back stop strings alike, so only the decoding differs)."""
    ids = tok.encode_prompt(" ".join(WORDS[i % len(WORDS)] for i in range(n)))[:n]

    def old() -> None:
        for i in range(1, len(ids) + 1):
            tok.decode(ids[:i])

    def new() -> None:
        ts = TextStream(tok, ())
        for i in ids:
            ts.push([i])
        ts.flush()

    t_old, t_new = (min(timeit.repeat(f, number=1, repeat=3)) for f in (old, new))
    return (
        f"(5) detokenise {len(ids)} tokens, per-token",
        f"{t_old / t_new:.1f}x",
        f"full re-decode {t_old / len(ids) * 1e6:.1f} us/token, incremental {t_new / len(ids) * 1e6:.1f}",
    )


REAL_MODELS = ("smollm2",)


def _real_model(model: str, tiny: bool) -> None:
    """A real checkpoint instead of a random toy: SmolLM2-135M-Instruct from its GGUF."""
    if model not in REAL_MODELS:
        raise SystemExit(f"unknown model {model!r}; available: {', '.join(REAL_MODELS)}")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import _decoder_real

    _decoder_real.main(_decoder_real.TINY if tiny else _decoder_real.FULL)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tiny", action="store_true", help="tiny sizes (CI smoke run, < 60 s)")
    parser.add_argument("--size", choices=sorted(SIZES), help="model size (default: full, or tiny)")
    parser.add_argument("--device", default="cpu", help="torch device for every side, e.g. cuda")
    parser.add_argument("--model", choices=REAL_MODELS, help="a real model instead of the random toy")
    args = parser.parse_args()
    main(tiny=args.tiny, size=args.size, device=args.device, model=args.model)
