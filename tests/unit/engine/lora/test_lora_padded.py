"""The decoder's packed-token LoRA path (`LoRAContext.set_padded`) against a naive fp64 loop:
every layout (sorted runs, interleaved, sparse slot range, rows without adapter) is exact."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from constellation.engine.lora.layer import NO_ADAPTER, LoRAContext, MultiLoRALinear

IN, OUT, SLOTS, MAX_RANK = 24, 40, 12, 8
LAYOUTS = {
    "sorted-equal-runs": [0, 0, 1, 1, 2, 2, 3, 3],  # the copy-free layout
    "sorted-unequal-runs": [0, 1, 1, 1, 2, 5, 5],
    "interleaved": [3, 0, 3, 1, 0, 3, 2],
    "with-none": [NO_ADAPTER, NO_ADAPTER, 2, 2, 4, NO_ADAPTER, 4],
    "sparse-range": [0, 11, 0, 11, 11],  # two slots far apart: A and B copied, not viewed
    "one-row": [6],
    "all-none": [NO_ADAPTER, NO_ADAPTER],
    # One long run per adapter (an encoder batch sorted by adapter): a matmul pair per run.
    "long-runs": [NO_ADAPTER] * 3 + [0] * 20 + [3] * 17 + [NO_ADAPTER] * 4,
}


def _layer(ranks: list[int], deterministic: bool) -> tuple[MultiLoRALinear, LoRAContext, list]:
    gen = torch.Generator().manual_seed(0)
    ctx = LoRAContext(SLOTS, deterministic=deterministic)
    layer = MultiLoRALinear(nn.Linear(IN, OUT), ctx, SLOTS, MAX_RANK)
    adapters = []
    for slot, r in enumerate(ranks):
        A, B = torch.randn(r, IN, generator=gen), torch.randn(OUT, r, generator=gen)
        layer.set_slot(slot, A, B, 2.0 / r)
        adapters.append((A, B, 2.0 / r))
    return layer, ctx, adapters


def _naive(layer: MultiLoRALinear, adapters: list, x: torch.Tensor, slots: list[int]) -> torch.Tensor:
    W, b = layer.base.weight.double(), layer.base.bias.double()
    rows = []
    for row, s in zip(x.double(), slots, strict=True):
        y = row @ W.t() + b
        if s != NO_ADAPTER:
            A, B, scale = adapters[s]
            y = y + scale * (row @ A.double().t()) @ B.double().t()
        rows.append(y)
    return torch.stack(rows).float()


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("ranks", [[8] * SLOTS, [1, 2, 4, 8, 3, 5] * 2], ids=["same-rank", "mixed-ranks"])
@pytest.mark.parametrize("deterministic", [False, True])
def test_padded_matches_naive_loop(layout: str, ranks: list[int], deterministic: bool) -> None:
    layer, ctx, adapters = _layer(ranks, deterministic)
    slots = LAYOUTS[layout]
    x = torch.randn(len(slots), IN, generator=torch.Generator().manual_seed(1))
    ctx.set_padded(slots)
    with torch.no_grad():
        got = layer(x)
    torch.testing.assert_close(got, _naive(layer, adapters, x, slots), rtol=1e-4, atol=1e-4)


def test_a_row_gets_the_same_bits_in_either_layout() -> None:
    """Sorted equal runs skip the copies; the same rows shuffled take them: same sums, same bits.

    The base weights are zeroed: a packed GEMM's bits may depend on a row's position among the
    threads' row blocks, and this test is about the LoRA path's copies alone."""
    layer, ctx, _ = _layer([8] * SLOTS, deterministic=True)
    with torch.no_grad():
        layer.base.weight.zero_()
        layer.base.bias.zero_()

    x = torch.randn(6, IN, generator=torch.Generator().manual_seed(2))
    slots = [0, 0, 1, 1, 2, 2]
    perm = torch.tensor([4, 0, 5, 2, 1, 3])  # keeps each slot's rows in order
    with torch.no_grad():
        ctx.set_padded(slots)
        sorted_out = layer(x)
        ctx.set_padded([slots[i] for i in perm.tolist()])
        shuffled_out = layer(x[perm])[torch.argsort(perm)]  # back to the sorted order
    assert torch.equal(sorted_out, shuffled_out)


def test_padded_rejects_bad_slots_and_row_counts() -> None:
    layer, ctx, _ = _layer([4] * SLOTS, deterministic=False)
    with pytest.raises(ValueError, match="out of range"):
        ctx.set_padded([0, SLOTS])
    ctx.set_padded([0, 1, 1])
    with pytest.raises(ValueError, match="3 rows but the input has 2"):
        layer(torch.randn(2, IN))


def test_long_runs_take_the_per_run_path_and_short_ones_do_not() -> None:
    _, ctx, _ = _layer([8] * SLOTS, deterministic=False)
    ctx.set_padded(LAYOUTS["long-runs"])
    assert ctx.plan is not None and ctx.plan.pad is not None
    assert ctx.plan.pad.segments == ((0, 3, 23), (3, 23, 40))
    ctx.set_padded(LAYOUTS["interleaved"])
    assert ctx.plan is not None and ctx.plan.pad is not None and ctx.plan.pad.segments == ()
