"""Multi-LoRA linear layers: one forward runs rows that use different adapters, or none.

Each wrapped `nn.Linear` keeps stacked, zero-padded adapter slots; a `LoRAContext` shared by all
layers of one base says which slot each row of the batch uses. Rows sorted by slot in equal runs
share one copy of their adapter's A and B per layer; other mixes gather A and B per row.
Packed decoder tokens (`set_padded`) are laid out per adapter, zero-padded: one bmm pair on
views of the batch's slot range. On a CPU the base GEMM can run on a oneDNN-prepacked copy of
the weight (`MultiLoRALinear.prepack`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum

import torch
from torch import nn

# Slot -1 means "no adapter": the row gets the base layer's output only. Stored slots are kept
# with one extra all-zero slot at index `n_slots`, and -1 gathers from it, so mixed batches need
# no branch per row.
NO_ADAPTER = -1
# Slot buffers start at this rank (or the limit, if lower) and grow when a larger adapter comes:
# most adapters use r = 8 or 16, and slots at the largest rank allowed would cost 4x the memory.
INITIAL_RANK = 16


class _Layout(Enum):
    NONE = 0  # every row is NO_ADAPTER: base output only
    SINGLE = 1  # every row uses one slot: one plain matmul pair
    GROUPED = 2  # rows sorted by slot in equal runs (NO_ADAPTER last): A, B gathered per run
    GATHERED = 3  # any other mix, or deterministic: A and B gathered per row
    PADDED = 4  # packed rows (`set_padded`) moved to a [slots, M, in] block: bmm on A, B views


@dataclass(frozen=True, slots=True)
class _Plan:
    layout: _Layout
    slots: tuple[int, ...]  # distinct adapter slots in the batch (no NO_ADAPTER)
    index: torch.Tensor  # [N] slot per row, NO_ADAPTER mapped to the zero slot
    group_slots: torch.Tensor  # [G] slot of each run of rows when GROUPED
    run: int  # rows per run when GROUPED; the first G * run rows have an adapter
    pad: _Padding | None = None  # where each row goes when PADDED


@dataclass(frozen=True, slots=True)
class _Padding:
    """Rows with an adapter moved to a zero-padded block [width, m, in], block i = slot lo + i
    (or slot take[i] when the batch's slots are too sparse for a view of a slot range)."""

    rows: int  # rows of the packed input
    src: torch.Tensor  # [n] packed rows that use an adapter
    dst: torch.Tensor  # [n] their row in the padded block, flattened
    lo: int  # first slot of the viewed range
    width: int  # slots in the block
    m: int  # rows per slot (the most any slot has)
    take: torch.Tensor | None  # [width] slots to copy instead of a view
    identity: bool  # the packed rows already are the padded block: no copy in or out
    # (slot, first row, end row) when each adapter's rows are one long run (and not `identity`):
    # a matmul pair per run on views, no copies (an encoder batch of sequences sorted by adapter).
    segments: tuple[tuple[int, int, int], ...] = ()


class LoRAContext:
    """One mutable object shared by every `MultiLoRALinear` of one loaded base.

    `set_mapping(slots)` gives, before a forward, the adapter slot of each row of the layers'
    input's FIRST dimension: x may be [B, S, in] with slots [B], or packed tokens [T, in] with
    slots [T]. Rows sorted by slot with NO_ADAPTER rows last (`sort_key` gives the order), each
    adapter on the same number of rows, take the grouped path; any other mapping is exact too
    but gathers A and B per row.
    `deterministic=True` always takes the gathered path, so a row's bits never depend on which
    other rows share its batch, and computes 3-D inputs' base linear per sequence (a bmm),
    because a plain GEMM's reduction order changes with the number of rows.
    """

    def __init__(
        self, n_slots: int, *, deterministic: bool = False, device: torch.device | str = "cpu"
    ) -> None:
        if n_slots <= 0:
            raise ValueError(f"n_slots must be positive, got {n_slots}")
        self.n_slots = n_slots
        self.deterministic = deterministic
        self.device = torch.device(device)  # where the layers' weights, and so the plan's indices, live
        self._plan: _Plan | None = None

    @property
    def plan(self) -> _Plan | None:
        return self._plan

    def set_mapping(self, slots: torch.Tensor) -> None:
        """Slot per row (LongTensor [N]); NO_ADAPTER (-1) rows get the base output only."""
        if slots.dim() != 1:
            raise ValueError(f"slots must be 1-D [N], got shape {tuple(slots.shape)}")
        slots = slots.to(torch.long)
        # One host sync per forward, not per layer.
        values = sorted(set(slots.tolist()))
        bad = [v for v in values if v < NO_ADAPTER or v >= self.n_slots]
        if bad:
            raise ValueError(f"slot indices {bad} out of range [-1, {self.n_slots})")
        index = self.sort_key(slots)
        used = tuple(v for v in values if v != NO_ADAPTER)
        counts = torch.bincount(index, minlength=self.n_slots + 1)[: self.n_slots]  # [n_slots]
        runs = set(counts[list(used)].tolist())
        if values == [NO_ADAPTER]:
            layout = _Layout.NONE
        elif len(values) == 1 and not self.deterministic:
            layout = _Layout.SINGLE
        elif self.deterministic or len(runs) != 1 or bool((index[1:] < index[:-1]).any()):
            layout = _Layout.GATHERED
        else:
            layout = _Layout.GROUPED
        group = torch.tensor(used, dtype=torch.long, device=slots.device)  # [G]
        self._plan = _Plan(layout, used, index, group_slots=group, run=min(runs, default=0))

    def set_padded(self, slots: Sequence[int]) -> None:
        """Slot per packed row [T], as a host list (the decoder's step builds one anyway).

        Each layer moves the rows that use an adapter into a zero-padded [slots, M, in] block
        and runs one bmm pair on a view of the batch's slot range of A and B (a copy of the
        used slots' A and B only when they are sparse in that range): A and B are read once
        per adapter, never gathered per row, whatever the mix of run lengths.
        Not bit-stable across batches even when `deterministic`: the block's shape (M, slot range)
        picks the GEMM kernel, as the row count does for the decoder's packed base GEMMs; seeded
        outputs stay equal at the token level (the decoder's tests check exactly that)."""
        bad = sorted({v for v in slots if v < NO_ADAPTER or v >= self.n_slots})
        if bad:
            raise ValueError(f"slot indices {bad} out of range [-1, {self.n_slots})")
        used = tuple(sorted(set(slots) - {NO_ADAPTER}))
        if not used:
            self._plan = _Plan(_Layout.NONE, (), torch.empty(0, dtype=torch.long), torch.empty(0), 0)
            return
        dev = self.device
        lo, hi = used[0], used[-1]
        sparse = hi - lo + 1 > 2 * len(used)  # a view would read mostly idle slots' A and B
        block = {s: i for i, s in enumerate(used)} if sparse else {s: s - lo for s in used}
        src = [row for row, slot in enumerate(slots) if slot != NO_ADAPTER]
        m = max(Counter(slots[row] for row in src).values())
        taken: Counter[int] = Counter()
        dst: list[int] = []
        for row in src:  # k-th row of a slot goes to row k of the slot's block
            slot = slots[row]
            dst.append(block[slot] * m + taken[slot])
            taken[slot] += 1
        width = len(used) if sparse else hi - lo + 1
        identity = len(slots) == width * m and dst == list(range(len(slots)))
        runs = _runs(slots)
        # One run per adapter, long enough that a matmul pair per run beats moving the rows.
        by_runs = len(runs) == len(used) and len(src) >= SEGMENT_ROWS * len(used)
        pad = _Padding(
            rows=len(slots), src=torch.tensor(src, device=dev), dst=torch.tensor(dst, device=dev), lo=lo,
            width=width, m=m, take=torch.tensor(used, device=dev) if sparse else None,
            identity=identity, segments=tuple(runs) if by_runs and not identity else (),
        )  # fmt: skip
        index = torch.empty(0, dtype=torch.long)  # unused by this layout
        self._plan = _Plan(_Layout.PADDED, used, index, index, 0, pad=pad)

    def sort_key(self, slots: torch.Tensor) -> torch.Tensor:
        """Slot per row with NO_ADAPTER mapped past the last slot: rows sorted by it group."""
        slots = slots.to(torch.long)
        return torch.where(slots < 0, torch.full_like(slots, self.n_slots), slots)

    def clear_mapping(self) -> None:
        """Forget the mapping: layers return the base output only."""
        self._plan = None


class MultiLoRALinear(nn.Module):
    """`y = base(x) + scale[s] * (x @ A[s]) @ B[s]` with `s` the row's slot, for all rows at once.

    A: [slots + 1, in, r], B: [slots + 1, r, out] (the extra slot is all zero, for NO_ADAPTER);
    smaller ranks are zero-padded to the allocated rank `r`, so mixed ranks in one batch are exact.
    `r` starts at `min(max_rank, INITIAL_RANK)` and grows (to a power of two, at most `max_rank`,
    the limit adapters are checked against) when a larger adapter is set: slots for the largest
    rank allowed would cost memory that most bases never use. The scale is folded into B when a
    slot is set, so the forward has no extra multiply.
    """

    def __init__(self, base: nn.Linear, ctx: LoRAContext, n_slots: int, max_rank: int) -> None:
        super().__init__()
        if n_slots != ctx.n_slots:
            raise ValueError(f"n_slots={n_slots} differs from the context's {ctx.n_slots}")
        if max_rank <= 0:
            raise ValueError(f"max_rank must be positive, got {max_rank}")
        self.base = base
        self.ctx = ctx
        self.n_slots = n_slots
        self.max_rank = max_rank
        self.in_features = base.in_features
        self.out_features = base.out_features
        w = base.weight
        r = min(max_rank, INITIAL_RANK)
        self.register_buffer("lora_A", w.new_zeros(n_slots + 1, self.in_features, r))
        self.register_buffer("lora_B", w.new_zeros(n_slots + 1, r, self.out_features))
        self.register_buffer("scale", w.new_zeros(n_slots + 1))
        self.lora_A: torch.Tensor
        self.lora_B: torch.Tensor
        self.scale: torch.Tensor
        # Rank per slot (last = the zero slot): a batch only multiplies up to its largest rank.
        self._rank = [0] * (n_slots + 1)
        self._prepacked: torch.Tensor | None = None  # the base weight in oneDNN's layout (`prepack`)

    @torch.no_grad()
    def prepack(self) -> bool:
        """Run the base linear from now on as a oneDNN GEMM on a copy of its weight reordered,
        once, into that library's blocked layout, instead of the BLAS library's GEMM on the plain
        weight. Both are fp32. Why: where the BLAS GEMM takes a narrower vector path than the CPU
        has (MKL on an AMD CPU with AVX-512 uses AVX2), oneDNN's uses the widest (docs/decisions.md
        has the measurement). Not used in deterministic mode (its per-sequence bmm stays). False,
        and nothing changes, off a CPU, for other dtypes, or in a torch built without oneDNN."""
        w = self.base.weight
        if w.device.type != "cpu" or w.dtype != torch.float32 or not torch.backends.mkldnn.is_available():
            return False
        try:  # a private op (what torch.compile's CPU freezing uses): absent, keep the plain GEMM
            self._prepacked = torch.ops.mkldnn._reorder_linear_weight(w.detach())
        except (AttributeError, RuntimeError):
            return False
        return True

    @property
    def prepacked_bytes(self) -> int:
        """Bytes of the prepacked weight copy (0 without one)."""
        return 0 if self._prepacked is None else self.base.weight.numel() * self.base.weight.element_size()

    @torch.no_grad()
    def set_slot(self, slot: int, A: torch.Tensor, B: torch.Tensor, scale: float) -> None:
        """Load one adapter into `slot`. A, B in PEFT orientation: A [r, in] (lora_A.weight),
        B [out, r] (lora_B.weight)."""
        self._check_slot(slot)
        r = A.shape[0]
        if A.shape != (r, self.in_features) or B.shape != (self.out_features, r):
            raise ValueError(
                f"adapter shapes A{tuple(A.shape)} B{tuple(B.shape)} do not fit a linear "
                f"{self.in_features}->{self.out_features}; expected A [r, {self.in_features}], "
                f"B [{self.out_features}, r]"
            )
        if r > self.max_rank:
            raise ValueError(f"adapter rank {r} exceeds max_rank {self.max_rank}; raise max_rank")
        if r > self.rank_capacity:
            self._grow(r)
        self.lora_A[slot].zero_()
        self.lora_B[slot].zero_()
        self.lora_A[slot, :, :r] = A.t()  # [in, r]
        self.lora_B[slot, :r, :] = B.t() * scale  # [r, out]
        self.scale[slot] = scale
        self._rank[slot] = r

    @property
    def rank_capacity(self) -> int:
        """The rank the slot buffers hold now (every slot zero-padded to it)."""
        return self.lora_A.shape[2]

    def _grow(self, r: int) -> None:
        """Reallocate the slots for rank `r` (the next power of two, within `max_rank`), keeping
        what they hold. Called between forwards, like `set_slot`."""
        cap = min(self.max_rank, 1 << (r - 1).bit_length())
        old = self.rank_capacity
        A = self.lora_A.new_zeros(self.n_slots + 1, self.in_features, cap)
        B = self.lora_B.new_zeros(self.n_slots + 1, cap, self.out_features)
        A[:, :, :old] = self.lora_A
        B[:, :old, :] = self.lora_B
        self.lora_A, self.lora_B = A, B  # registered buffers: assignment replaces them

    @torch.no_grad()
    def clear_slot(self, slot: int) -> None:
        """Zero `slot`: a row mapped to it gets the base output only."""
        self._check_slot(slot)
        self.lora_A[slot].zero_()
        self.lora_B[slot].zero_()
        self.scale[slot] = 0.0
        self._rank[slot] = 0

    def _check_slot(self, slot: int) -> None:
        if not 0 <= slot < self.n_slots:
            raise IndexError(f"slot {slot} out of range [0, {self.n_slots})")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self._base(x)
        plan = self.ctx.plan
        if plan is None or plan.layout is _Layout.NONE:
            return y
        # Deterministic mode keeps the full padded rank: a row's reduction length must not
        # depend on which ranks share its batch.
        r = self.rank_capacity if self.ctx.deterministic else max(self._rank[s] for s in plan.slots)
        if r == 0:  # no adapter in this batch touches this layer
            return y
        if plan.pad is not None:
            return self._padded(x, y, plan.pad, r)
        A, B = self.lora_A[:, :, :r], self.lora_B[:, :r, :]  # views trimmed to the batch's rank
        if plan.layout is _Layout.SINGLE:
            s = plan.slots[0]
            return y.add_((x @ A[s]) @ B[s])
        n = x.shape[0]
        if plan.index.shape[0] != n:
            raise ValueError(f"mapping has {plan.index.shape[0]} rows but the input has {n}")
        if plan.layout is _Layout.GROUPED:
            return self._grouped(x, y, plan, A, B)
        xr = x.reshape(n, -1, self.in_features)  # [N, S, in]
        # index_select copies whole [in, r] blocks (memcpy); advanced indexing is several x slower.
        xa = _bmm(xr, A.index_select(0, plan.index))  # [N, S, r]
        ys = y.view(n, -1, self.out_features)  # [N, S, out]
        if self.ctx.deterministic:
            ys.add_(_bmm(xa, B.index_select(0, plan.index)))
        else:
            ys.baddbmm_(xa, B.index_select(0, plan.index))
        return y

    def _grouped(
        self, x: torch.Tensor, y: torch.Tensor, plan: _Plan, A: torch.Tensor, B: torch.Tensor
    ) -> torch.Tensor:
        """Rows sorted by slot in runs of equal length: one bmm over runs, with A and B as views
        of the slot buffers when the batch's slots are a range, else a copy per adapter (never
        per row); NO_ADAPTER rows, at the end, are skipped."""
        per_row = x.numel() // (x.shape[0] * self.in_features)  # tokens per mapped row
        g, m = len(plan.slots), plan.run * per_row
        xs = x.reshape(-1, self.in_features)[: g * m].view(g, m, self.in_features)  # [G, M, in]
        ys = y.view(-1, self.out_features)[: g * m].view(g, m, self.out_features)  # [G, M, out]
        lo, hi = plan.slots[0], plan.slots[-1]
        if hi - lo + 1 == g:  # the batch's slots are a range (ascending, as its runs): views
            A, B = A[lo : hi + 1], B[lo : hi + 1]
        else:  # a copy of each adapter's A and B
            A, B = A.index_select(0, plan.group_slots), B.index_select(0, plan.group_slots)
        xa = torch.bmm(xs, A)  # [G, M, r]
        ys.baddbmm_(xa, B)
        return y

    def _padded(self, x: torch.Tensor, y: torch.Tensor, pad: _Padding, r: int) -> torch.Tensor:
        """Packed rows [T, in]: each adapter's rows in its own zero-padded block, one bmm pair."""
        xs = x.reshape(-1, self.in_features)  # [T, in]
        if xs.shape[0] != pad.rows:
            raise ValueError(f"mapping has {pad.rows} rows but the input has {xs.shape[0]}")
        ys = y.view(-1, self.out_features)  # [T, out]
        if pad.segments:
            for slot, start, end in pad.segments:
                part = ys[start:end]  # a view: updated in place
                part.addmm_(xs[start:end] @ self.lora_A[slot, :, :r], self.lora_B[slot, :r])
            return y
        A, B = self.lora_A, self.lora_B
        if pad.take is None:
            A, B = A[pad.lo : pad.lo + pad.width], B[pad.lo : pad.lo + pad.width]  # views
        else:  # index_select on the flat 2-D view is one memcpy per slot (3-D is far slower)
            A = A.view(A.shape[0], -1).index_select(0, pad.take).view(pad.width, *A.shape[1:])
            B = B.view(B.shape[0], -1).index_select(0, pad.take).view(pad.width, *B.shape[1:])
        A, B = A[:, :, :r], B[:, :r]  # [W, in, r], [W, r, out]: trimmed to the batch's rank
        if pad.identity:
            # rows sorted by slot, as many per slot, every slot in the range used
            d = torch.bmm(torch.bmm(xs.view(pad.width, pad.m, -1), A), B)  # [W, M, out]
            return ys.add_(d.view(-1, self.out_features)).view_as(y)  # same sums as below
        xp = xs.new_zeros(pad.width * pad.m, self.in_features)  # [W * M, in]
        xp.index_copy_(0, pad.dst, xs.index_select(0, pad.src))
        d = torch.bmm(torch.bmm(xp.view(pad.width, pad.m, -1), A), B)  # [W, M, out]
        ys.index_add_(0, pad.src, d.view(-1, self.out_features).index_select(0, pad.dst))
        return y

    def _base(self, x: torch.Tensor) -> torch.Tensor:
        if self._prepacked is not None and not self.ctx.deterministic:
            return torch.ops.mkldnn._linear_pointwise(x, self._prepacked, self.base.bias, "none", [], "")
        if not (self.ctx.deterministic and x.dim() == 3):
            return self.base(x)
        # One GEMM per sequence with the same shape whatever the batch size: bitwise stable.
        n = x.shape[0]
        wt = self.base.weight.t().unsqueeze(0).expand(n, -1, -1)  # [N, in, out], no copy
        y = _bmm(x, wt)  # [N, S, out]
        return y if self.base.bias is None else y.add_(self.base.bias)

    def extra_repr(self) -> str:
        shape = f"in={self.in_features}, out={self.out_features}, slots={self.n_slots}"
        return f"{shape}, r={self.rank_capacity}, max_rank={self.max_rank}"


SEGMENT_ROWS = 16  # mean rows per adapter from which per-run matmuls beat the padded block


def _runs(slots: Sequence[int]) -> list[tuple[int, int, int]]:
    """(slot, start, end) of each run of equal slots with an adapter, in row order."""
    runs: list[tuple[int, int, int]] = []
    start = 0
    for i in range(1, len(slots) + 1):
        if i == len(slots) or slots[i] != slots[start]:
            if slots[start] != NO_ADAPTER:
                runs.append((slots[start], start, i))
            start = i
    return runs


def _bmm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """`torch.bmm` whose per-matrix bits do not depend on the batch size: a batch of one runs as
    two, because bmm hands a lone matrix to a plain GEMM whose blocking (and, on some CPUs and
    shapes, bits) differ from the batched kernel's."""
    if a.shape[0] != 1:
        return torch.bmm(a, b)
    return torch.bmm(a.expand(2, -1, -1), b.expand(2, -1, -1))[:1]


TargetSpec = Mapping[str, str] | Callable[[str], str | None]


def inject_lora(
    module: nn.Module, targets: TargetSpec, ctx: LoRAContext, n_slots: int, max_rank: int
) -> dict[str, MultiLoRALinear]:
    """Replace target `nn.Linear` submodules of `module` in place with `MultiLoRALinear`.

    `targets` maps a submodule's path in `module` to the HF module name adapters use for it
    (PEFT key with `base_model.model.` and `.lora_A.weight` stripped), either as a mapping
    {local_path: hf_name} or a callable local_path -> hf_name | None (None = leave alone).
    Returns {hf_name: layer}.
    """
    lookup = targets.get if isinstance(targets, Mapping) else targets
    chosen = [(path, lin) for path, lin in module.named_modules() if isinstance(lin, nn.Linear)]
    layers: dict[str, MultiLoRALinear] = {}
    for path, lin in chosen:
        hf_name = lookup(path)
        if hf_name is None:
            continue
        if hf_name in layers:
            raise ValueError(f"two modules map to the HF name {hf_name!r}")
        layer = MultiLoRALinear(lin, ctx, n_slots, max_rank)
        parent_path, _, attr = path.rpartition(".")
        setattr(module.get_submodule(parent_path), attr, layer)
        layers[hf_name] = layer
    if isinstance(targets, Mapping):
        missing = sorted(set(targets) - {p for p, _ in chosen})
        if missing:
            raise ValueError(f"target modules not found or not nn.Linear: {missing[:5]}")
    return layers
