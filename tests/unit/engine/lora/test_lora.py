"""MultiLoRALinear against a naive fp32 loop, one row and one adapter at a time.

Parametrised over how rows spread across adapters (punica's mixes) and over mixed ranks.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from constellation.engine.lora.layer import (
    INITIAL_RANK,
    NO_ADAPTER,
    LoRAContext,
    MultiLoRALinear,
    inject_lora,
)

IN, OUT, SLOTS, MAX_RANK = 24, 40, 6, 8
MIXES = [
    "identical",
    "distinct",
    "equal_runs",
    "equal_runs_gaps",
    "uniform",
    "skewed",
    "with_none",
    "all_none",
]


def _mapping(mix: str, n: int, gen: torch.Generator) -> torch.Tensor:
    """Slot per row for one of the standard adapter mixes."""
    if mix == "identical":
        return torch.full((n,), 2, dtype=torch.long)
    if mix == "distinct":
        return torch.arange(n, dtype=torch.long) % SLOTS
    if mix == "equal_runs":  # sorted, this is the grouped path: 4 adapters x 3 rows, one none
        return torch.cat([torch.arange(n - 1) % 4, torch.tensor([NO_ADAPTER])])
    if mix == "equal_runs_gaps":  # grouped too, but slots 0, 2, 5 are no range: A and B copied
        return torch.cat([torch.tensor([0, 2, 5]).repeat((n - 1) // 3), torch.tensor([NO_ADAPTER])])
    if mix == "uniform":
        return torch.randint(0, SLOTS, (n,), generator=gen)
    if mix == "skewed":
        # Zipf-like: slot 0 dominates, the tail is rare.
        p = 1.0 / torch.arange(1, SLOTS + 1, dtype=torch.float64) ** 1.5
        return torch.multinomial(p, n, replacement=True, generator=gen)
    if mix == "with_none":
        return torch.randint(NO_ADAPTER, SLOTS, (n,), generator=gen)
    return torch.full((n,), NO_ADAPTER, dtype=torch.long)


def _adapters(ranks: list[int], gen: torch.Generator) -> list[tuple[torch.Tensor, torch.Tensor, float]]:
    """(A [r, in], B [out, r], scale) per slot, B non-zero so the update is visible."""
    return [(torch.randn(r, IN, generator=gen), torch.randn(OUT, r, generator=gen), 2.0 / r) for r in ranks]


def _naive(
    lin: nn.Linear,
    adapters: list[tuple[torch.Tensor, torch.Tensor, float]],
    x: torch.Tensor,
    slots: torch.Tensor,
) -> torch.Tensor:
    """Reference: each row through its own adapter, float64 math, one at a time."""
    W, b = lin.weight.double(), lin.bias.double()
    rows = []
    for row, s in zip(x.double(), slots.tolist(), strict=True):
        y = row @ W.t() + b
        if s != NO_ADAPTER:
            A, B, scale = adapters[s]
            y = y + scale * (row @ A.double().t()) @ B.double().t()
        rows.append(y)
    return torch.stack(rows).float()


def _layer(ranks: list[int], deterministic: bool = False, prepacked: bool = False):
    gen = torch.Generator().manual_seed(0)
    lin = nn.Linear(IN, OUT)
    ctx = LoRAContext(SLOTS, deterministic=deterministic)
    layer = MultiLoRALinear(lin, ctx, SLOTS, MAX_RANK)
    adapters = _adapters(ranks, gen)
    for slot, (A, B, scale) in enumerate(adapters):
        layer.set_slot(slot, A, B, scale)
    if prepacked:
        assert layer.prepack()
    return layer, ctx, adapters, gen


@pytest.mark.parametrize("mix", MIXES)
@pytest.mark.parametrize("ranks", [[8] * SLOTS, [1, 2, 4, 8, 3, 5]], ids=["same-rank", "mixed-ranks"])
@pytest.mark.parametrize("shape", ["batch-seq", "packed"])
@pytest.mark.parametrize("deterministic", [False, True])
@pytest.mark.parametrize("order", ["as-given", "sorted"])
@pytest.mark.parametrize("prepacked", [False, True], ids=["blas", "prepacked"])
def test_matches_naive_loop(
    mix: str, ranks: list[int], shape: str, deterministic: bool, order: str, prepacked: bool
) -> None:
    layer, ctx, adapters, gen = _layer(ranks, deterministic, prepacked)
    n, seq = 13, 5
    slots = _mapping(mix, n, gen)
    if order == "sorted":  # the grouped path: rows by slot, NO_ADAPTER last
        slots = slots[torch.argsort(ctx.sort_key(slots), stable=True)]
    if shape == "packed":
        x = torch.randn(n, IN, generator=gen)  # [T, in], one slot per token
        ctx.set_mapping(slots)
        want = _naive(layer.base, adapters, x, slots)
    else:
        x = torch.randn(n, seq, IN, generator=gen)  # [B, S, in], one slot per sequence
        ctx.set_mapping(slots)
        flat = x.reshape(n * seq, IN)
        want = _naive(layer.base, adapters, flat, slots.repeat_interleave(seq)).view(n, seq, OUT)
    with torch.no_grad():
        got = layer(x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(7, IN), (3, 5, IN), (1, IN)], ids=["packed", "batch-seq", "one-row"])
def test_prepacked_base_equals_plain_linear(bias: bool, shape: tuple[int, ...]) -> None:
    gen = torch.Generator().manual_seed(1)
    lin = nn.Linear(IN, OUT, bias=bias)
    layer = MultiLoRALinear(lin, LoRAContext(SLOTS), SLOTS, MAX_RANK)
    x = torch.randn(shape, generator=gen)
    assert layer.prepacked_bytes == 0
    assert layer.prepack()
    assert layer.prepacked_bytes == IN * OUT * 4
    with torch.no_grad():
        got = layer(x)
        want = lin(x)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_deterministic_mode_ignores_the_prepacked_weight() -> None:
    """Its per-sequence bmm is what keeps a row's bits independent of the batch: unchanged."""
    layer, ctx, _, gen = _layer([4] * SLOTS, deterministic=True)
    x = torch.randn(4, 5, IN, generator=gen)
    ctx.set_mapping(torch.tensor([0, NO_ADAPTER, 3, 3]))
    with torch.no_grad():
        before = layer(x)
        assert layer.prepack()
        assert torch.equal(layer(x), before)


def test_prepack_declines_what_it_does_not_cover() -> None:
    layer = MultiLoRALinear(nn.Linear(IN, OUT).double(), LoRAContext(SLOTS), SLOTS, MAX_RANK)
    assert not layer.prepack()  # float64: the plain GEMM stays
    assert layer.prepacked_bytes == 0


def test_sorted_mapping_takes_grouped_path() -> None:
    _, ctx, _, _ = _layer([4] * SLOTS)
    ctx.set_mapping(torch.tensor([0, 0, 3, 5, NO_ADAPTER]))
    assert ctx.plan is not None and ctx.plan.layout.name == "GATHERED"  # unequal runs
    ctx.set_mapping(torch.tensor([0, 0, 3, 3, 5, 5, NO_ADAPTER]))
    assert ctx.plan is not None and ctx.plan.layout.name == "GROUPED" and ctx.plan.run == 2
    ctx.set_mapping(torch.tensor([3, 0, NO_ADAPTER, 5]))
    assert ctx.plan is not None and ctx.plan.layout.name == "GATHERED"


def test_clear_slot_gives_base_output() -> None:
    layer, ctx, _, gen = _layer([4] * SLOTS)
    layer.clear_slot(3)
    x = torch.randn(4, IN, generator=gen)
    ctx.set_mapping(torch.full((4,), 3))
    with torch.no_grad():
        assert torch.equal(layer(x), layer.base(x))


def test_no_mapping_means_base_only() -> None:
    layer, ctx, _, gen = _layer([4] * SLOTS)
    ctx.clear_mapping()
    x = torch.randn(3, IN, generator=gen)
    with torch.no_grad():
        assert torch.equal(layer(x), layer.base(x))


def test_row_bits_do_not_depend_on_batch_in_deterministic_mode() -> None:
    layer, ctx, _, gen = _layer([1, 2, 4, 8, 3, 5], deterministic=True)
    # A zero base isolates the LoRA path: the base linear's batch invariance is the encoder's
    # concern (its deterministic mode), not this layer's.
    nn.init.zeros_(layer.base.weight)
    nn.init.zeros_(layer.base.bias)
    x = torch.randn(32, 7, IN, generator=gen)
    slots = torch.randint(NO_ADAPTER, SLOTS, (32,), generator=gen)
    with torch.no_grad():
        ctx.set_mapping(slots)
        together = layer(x)
        for i in (0, 5, 31):
            ctx.set_mapping(slots[i : i + 1])
            assert torch.equal(layer(x[i : i + 1]), together[i : i + 1])


@pytest.mark.parametrize("deterministic", [False, True])
def test_slots_grow_to_a_larger_rank_and_keep_what_they_hold(deterministic: bool) -> None:
    gen = torch.Generator().manual_seed(3)
    ctx = LoRAContext(SLOTS, deterministic=deterministic)
    layer = MultiLoRALinear(nn.Linear(IN, OUT), ctx, SLOTS, max_rank=64)
    assert layer.rank_capacity == INITIAL_RANK
    adapters = _adapters([4, 40, 16], gen)
    layer.set_slot(0, *adapters[0])
    layer.set_slot(1, *adapters[1])  # past the initial rank: the slots grow to 64, not beyond
    assert layer.rank_capacity == 64
    layer.set_slot(2, *adapters[2])
    x = torch.randn(9, IN, generator=gen)
    slots = torch.tensor([0, 1, 2, NO_ADAPTER, 1, 0, 2, 2, 1])
    ctx.set_mapping(slots)
    with torch.no_grad():
        got = layer(x)
    torch.testing.assert_close(got, _naive(layer.base, adapters, x, slots), rtol=1e-5, atol=1e-5)


def test_rejects_bad_shapes_and_slots() -> None:
    layer, ctx, _, _ = _layer([4] * SLOTS)
    with pytest.raises(ValueError, match="exceeds max_rank"):
        layer.set_slot(0, torch.zeros(MAX_RANK + 1, IN), torch.zeros(OUT, MAX_RANK + 1), 1.0)
    with pytest.raises(ValueError, match="do not fit"):
        layer.set_slot(0, torch.zeros(4, IN + 1), torch.zeros(OUT, 4), 1.0)
    with pytest.raises(IndexError):
        layer.set_slot(SLOTS, torch.zeros(4, IN), torch.zeros(OUT, 4), 1.0)
    with pytest.raises(ValueError, match="out of range"):
        ctx.set_mapping(torch.tensor([SLOTS]))
    ctx.set_mapping(torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="mapping has 2 rows"):
        layer(torch.zeros(3, IN))


class _Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.q = nn.Linear(IN, IN)
        self.up = nn.Linear(IN, OUT)
        self.norm = nn.LayerNorm(IN)


def test_inject_with_mapping_and_callable() -> None:
    ctx = LoRAContext(SLOTS)
    block = _Block()
    layers = inject_lora(block, {"q": "layer.0.q_proj"}, ctx, SLOTS, MAX_RANK)
    assert set(layers) == {"layer.0.q_proj"}
    assert isinstance(block.q, MultiLoRALinear) and isinstance(block.up, nn.Linear)

    other = nn.Sequential(_Block())
    got = inject_lora(other, lambda p: p if p.endswith("up") else None, LoRAContext(SLOTS), SLOTS, 4)
    assert set(got) == {"0.up"}
    with pytest.raises(ValueError, match="not found"):
        inject_lora(_Block(), {"missing": "x"}, LoRAContext(SLOTS), SLOTS, 4)
