"""One causal LM behind `forward(step, kv) -> logits`, whichever family it is, and its loading
from a local Hugging Face checkpoint (safetensors only) in the dtype it is served in.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import Tensor, nn

from constellation.engine.decoder.kvcache import KVCache
from constellation.engine.models import gpt2
from constellation.engine.models.config import LMConfig, read_config
from constellation.engine.models.gpt2 import GPT2Model
from constellation.engine.models.layers import StepInput
from constellation.engine.models.llama import LlamaModel
from constellation.errors import InvalidInput


class CausalLM(nn.Module):
    """Either family behind one `forward(step, kv) -> logits [R, vocab]`."""

    def __init__(self, cfg: LMConfig) -> None:
        super().__init__()
        self.cfg = cfg
        if cfg.family == "gpt2":
            self.transformer = GPT2Model(cfg)
        else:
            self.model = LlamaModel(cfg)
        self.lm_head = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)

    @torch.inference_mode()
    def forward(self, step: StepInput, kv: KVCache) -> Tensor:
        body = self.transformer if self.cfg.family == "gpt2" else self.model  # HF's names for each
        h = body(step, kv)  # [T, dim]
        return self.lm_head(h[step.logits_rows]).float()  # [R, V]


def _read_weights(path: Path) -> dict[str, Tensor]:
    if (path / "model.safetensors").is_file():
        return load_file(path / "model.safetensors")
    index = path / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return {k: v for shard in shards for k, v in load_file(path / shard).items()}
    raise InvalidInput(
        f"no model.safetensors in {path}; convert the checkpoint to safetensors (pickle .bin is refused)"
    )


def _normalise_keys(cfg: LMConfig, sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """HF names -> ours: GPT-2 Conv1D weights transposed to Linear, tied heads filled in."""
    if cfg.family == "gpt2":
        sd = gpt2.hf_keys(sd)
    if "lm_head.weight" not in sd:
        if not cfg.tie_embeddings and cfg.family != "gpt2":
            raise InvalidInput("checkpoint has no lm_head.weight and does not tie embeddings")
        embed = "transformer.wte.weight" if cfg.family == "gpt2" else "model.embed_tokens.weight"
        sd["lm_head.weight"] = sd[embed]
    return sd


@functools.cache
def native_bf16(device: torch.device | str) -> bool:
    """Whether bf16 GEMMs run natively here: a GPU that supports them, or a CPU whose oneDNN
    can use AVX512-BF16 or AMX instructions (elsewhere oneDNN emulates bf16, slower than fp32)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu" or not torch.backends.mkldnn.is_available():
        return False
    try:
        flags = next(ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("flags"))
    except (OSError, StopIteration):
        return False
    return bool({"avx512_bf16", "amx_bf16"} & set(flags.split()))


def serving_dtype(cfg: LMConfig, device: torch.device | str) -> torch.dtype:
    """The dtype a checkpoint is served in: bf16 where it declares bf16 and the device runs bf16
    natively (decode reads every weight once per step, so half the bytes is faster; emulated
    bf16 is slower than fp32), fp32 otherwise (fp16 included: CPUs have no fast fp16 GEMM).
    docs/decisions.md has the measurements."""
    return torch.bfloat16 if cfg.dtype == "bfloat16" and native_bf16(device) else torch.float32


def load_causal_lm(path: Path, dtype: torch.dtype | None = None) -> CausalLM:
    """Build the forward for a local HF checkpoint dir; weights cast to `dtype` (default: what
    `serving_dtype` picks for a CPU)."""
    cfg = read_config(path)
    dtype = dtype or serving_dtype(cfg, "cpu")
    with torch.device("meta"):
        model = CausalLM(cfg)
    sd = {k: v.to(dtype) for k, v in _normalise_keys(cfg, _read_weights(path)).items()}
    model.load_state_dict(sd, strict=True, assign=True)
    return model.eval()
