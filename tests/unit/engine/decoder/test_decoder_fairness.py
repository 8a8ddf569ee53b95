"""The decoder admits waiting sequences in turn across tenants: a quiet tenant's request is
admitted next, not after another tenant's backlog."""

from __future__ import annotations

from constellation.config import EngineLimits
from constellation.engine.decoder.detokenizer import TextStream
from constellation.engine.decoder.engine import DecoderEngine
from constellation.engine.decoder.runner import load_runner
from constellation.engine.decoder.sampling import SamplingParams, make_generator
from constellation.engine.decoder.sequence import Seq

GREEDY = SamplingParams(max_tokens=4, temperature=0.0)


def test_decoder_admits_a_quiet_tenant_before_anothers_backlog(families) -> None:  # type: ignore[no-untyped-def]
    fam = families["llama"]
    limits = EngineLimits(kv_cache_bytes=1 << 20, max_decode_seqs=2, max_batch_tokens=64)
    runner = load_runner(fam.base, limits)
    side = DecoderEngine(limits)
    try:
        busy = [side.prepare(fam.base, None, prompt=f"cat {i}", params=GREEDY, tenant="A") for i in range(20)]
        quiet = side.prepare(fam.base, None, prompt="dog", params=GREEDY, tenant="B")
    finally:
        side.close()
    assert quiet.tenant == "B"

    def seq(p):  # type: ignore[no-untyped-def]
        return Seq(p, lambda d: None, TextStream(runner.tok, ()), make_generator(0))

    for p in busy:
        runner.scheduler.waiting.push(seq(p))
    runner.step()  # two of A's sequences run; eighteen wait
    runner.scheduler.waiting.push(seq(quiet))
    while len(runner.scheduler.running) == 2:
        runner.step()  # until one of the running sequences finishes
    work = runner.scheduler.schedule()
    admitted = [w.seq.prep for w in work if w.start == 0]
    assert admitted[0] == quiet  # next, ahead of A's eighteen
