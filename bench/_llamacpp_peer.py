"""llama.cpp's side of `bench decoder --model smollm2`, run in the peers' venv (`make bench-peers`).

Reads a job as JSON on stdin, writes results as JSON on stdout. Uses llama-cpp-python's bindings
of llama.cpp's C API directly: all sequences decode together in one `llama_batch` per step, as
llama.cpp's own `batched` example and its server do (the high-level `Llama` class runs one
sequence at a time). Variants other than the file as shipped are made with llama.cpp's own
quantiser (`llama_model_quantize`, requantising allowed): the same dequantised weights.
"""

from __future__ import annotations

import ctypes
import json
import sys
import time
from pathlib import Path
from typing import Any

import llama_cpp as ll
import numpy as np

FTYPES = {"F32": ll.LLAMA_FTYPE_ALL_F32, "F16": ll.LLAMA_FTYPE_MOSTLY_F16, "BF16": ll.LLAMA_FTYPE_MOSTLY_BF16}


def requantise(src: Path, dst: Path, ftype: str, threads: int) -> None:
    params = ll.llama_model_quantize_default_params()
    params.ftype, params.allow_requantize, params.nthread = FTYPES[ftype], True, threads
    if ll.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params)) != 0:
        raise RuntimeError(f"llama_model_quantize to {ftype} failed")


class Model:
    """One GGUF loaded with a context big enough for every sequence of the job at once."""

    def __init__(self, path: Path, n_seqs: int, n_ctx: int, threads: int) -> None:
        mp = ll.llama_model_default_params()
        # No extra buffer types: for Q4_1 the one that applies is AMX repacking, whose tile
        # instructions fault (SIGILL) on this VM although the CPU flags list AMX.
        mp.use_extra_bufts = False
        self.model = ll.llama_model_load_from_file(str(path).encode(), mp)
        if not self.model:
            raise RuntimeError(f"llama.cpp could not load {path}")
        cp = ll.llama_context_default_params()
        cp.n_ctx, cp.n_batch, cp.n_ubatch = n_ctx, n_ctx, min(n_ctx, 512)
        # One KV stream per sequence (n_ctx split evenly): a unified cache makes every token
        # attend over all sequences' cells, masked, 32x the attention work at 32 sequences.
        cp.n_seq_max, cp.kv_unified = n_seqs, False
        cp.n_threads = cp.n_threads_batch = threads
        self.ctx = ll.llama_init_from_model(self.model, cp)
        if not self.ctx:
            raise RuntimeError("llama.cpp could not create a context")
        self.n_vocab = ll.llama_vocab_n_tokens(ll.llama_model_get_vocab(self.model))
        self.batch = ll.llama_batch_init(n_ctx, 0, 1)
        self.bytes = int(ll.llama_model_size(self.model))

    def close(self) -> None:
        ll.llama_batch_free(self.batch)
        ll.llama_free(self.ctx)
        ll.llama_model_free(self.model)

    def reset(self) -> None:
        ll.llama_memory_clear(ll.llama_get_memory(self.ctx), True)

    def decode(self, rows: list[tuple[int, int, int, bool]]) -> None:
        """rows: (token, position, sequence, wants logits)."""
        b = self.batch
        for i, (tok, pos, seq, want) in enumerate(rows):
            b.token[i], b.pos[i], b.n_seq_id[i], b.seq_id[i][0], b.logits[i] = tok, pos, 1, seq, want
        b.n_tokens = len(rows)
        if ll.llama_decode(self.ctx, b) != 0:
            raise RuntimeError("llama_decode failed")

    def argmax(self, i: int) -> int:
        logits = np.ctypeslib.as_array(ll.llama_get_logits_ith(self.ctx, i), shape=(self.n_vocab,))
        return int(logits.argmax())

    def generate(self, prompts: list[list[int]], new: int) -> tuple[list[list[int]], list[float]]:
        """Greedy, exactly `new` tokens per sequence (EOS ignored), all sequences batched:
        one prefill batch, then one decode batch per step. Returns tokens and step end times."""
        self.reset()
        rows = [(t, p, s, p == len(ids) - 1) for s, ids in enumerate(prompts) for p, t in enumerate(ids)]
        self.decode(rows)
        out_rows = [i for i, r in enumerate(rows) if r[3]]
        outs = [[self.argmax(i)] for i in out_rows]
        marks = [time.perf_counter()]
        for step in range(1, new):
            self.decode(
                [
                    (o[-1], len(ids) + step - 1, s, True)
                    for s, (ids, o) in enumerate(zip(prompts, outs, strict=True))
                ]
            )
            for s, o in enumerate(outs):
                o.append(self.argmax(s))
            marks.append(time.perf_counter())
        return outs, marks


def run_variant(path: Path, job: dict[str, Any]) -> dict[str, Any]:
    prompts, new, threads = job["prompts"], job["new_tokens"], job["threads"]
    n_ctx = len(prompts) * (max(map(len, prompts)) + new + 16)
    m = Model(path, len(prompts), n_ctx, threads)
    try:
        m.generate([p[:8] for p in prompts], 2)  # warm-up
        best = 0.0
        tokens: list[list[int]] = []
        for _ in range(job["rounds"]):
            t0 = time.perf_counter()
            tokens, _ = m.generate(prompts, new)
            best = max(best, len(prompts) * new / (time.perf_counter() - t0))
        single = 0.0
        for _ in range(job["rounds"]):
            _, marks = m.generate(prompts[:1], job["single_tokens"])
            single = max(single, (len(marks) - 1) / (marks[-1] - marks[0]))
        return {"batched_tps": best, "single_decode_tps": single, "bytes": m.bytes, "tokens": tokens}
    finally:
        m.close()


def main() -> None:
    job = json.load(sys.stdin)
    ll.llama_backend_init()
    src, work = Path(job["gguf"]), Path(job["work"])
    results: dict[str, Any] = {"system_info": ll.llama_print_system_info().decode()}
    for variant in job["variants"]:
        path = src
        if variant != job["shipped"]:
            path = work / f"{src.stem}.{variant}.gguf"
            requantise(src, path, variant, job["threads"])
        results[variant] = run_variant(path, job)
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    main()
