"""The PEFT LoRA format, read in one place: what an adapter folder holds and whether serving can
serve it, from configs and safetensors headers alone (no torch), for import and engines alike.

An adapter that imports is one that serves: what the engines cannot apply is refused here.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from constellation.artifacts.safetensors_check import TensorInfo, read_safetensors_header
from constellation.errors import InvalidInput

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
_A, _B = ".lora_A.weight", ".lora_B.weight"
_EMBEDDING = (".lora_embedding_A", ".lora_embedding_B")

# The linears the engines wrap with LoRA layers. Encoder bases: these inside an encoder layer.
ENCODER_TARGETS = ("query", "key", "value", "attention.output.dense", "intermediate.dense", "output.dense")
# Wrapper prefixes an encoder adapter may carry when trained on a task model (BertForX.bert...).
ENCODER_WRAPPERS = ("bert.", "model.", "encoder_model.")
# Decoder bases: these leaves of every block (GPT-2's Conv1D ones included).
DECODER_TARGETS = frozenset(
    ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "c_attn", "c_proj", "c_fc")
)
# Modules no served forward reads: sentence pooling reads the token states, never BERT's pooler.
# PEFT's target_modules="all-linear" adapts pooler.dense; such weights are noted, not served.
UNREAD = ("pooler",)


@dataclass(frozen=True, slots=True)
class LoRAModule:
    """One adapted linear: lora_A [r, in] and lora_B [out, r] under their safetensors names."""

    name: str  # HF module path, PEFT's prefix stripped
    a_key: str
    b_key: str
    a_shape: tuple[int, ...]
    b_shape: tuple[int, ...]
    scale: float

    @property
    def rank(self) -> int:
        return self.a_shape[0]


@dataclass(frozen=True, slots=True)
class PeftAdapter:
    """A PEFT LoRA folder as serving sees it: the modules it adapts, and those it only carries."""

    weights: Path
    config: Mapping[str, object]
    modules: tuple[LoRAModule, ...]  # served
    unread: tuple[LoRAModule, ...]  # adapted modules that no served forward reads

    @property
    def rank(self) -> int:
        return max(m.rank for m in self.modules)

    @property
    def scale(self) -> float:
        """The config's alpha / r (per-module scales may differ by `alpha_pattern`)."""
        return lora_scale(self.config, int(self.config.get("r", 8)))  # type: ignore[call-overload]

    def notes(self) -> list[str]:
        """What an operator should know but need not fix."""
        if not self.unread:
            return []
        names = ", ".join(m.name for m in self.unread)
        return [f"LoRA weights on {names} are not served: no served forward reads those modules"]


def read_json_object(path: Path, *, what: str) -> dict[str, object]:
    """Parse `path` as a JSON object, or say which file is wrong and how."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InvalidInput(f"{path.parent.name}/ has no {path.name}; {what} needs one.")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InvalidInput(f"{path.name} is not readable JSON ({e}); fix or regenerate it.")
    if not isinstance(data, dict):
        raise InvalidInput(f"{path.name} must be a JSON object; regenerate it with save_pretrained.")
    return data


def refuse_pickles(where: str, names: Sequence[str]) -> None:
    """Refuse pickle-based weight files: loading one can run arbitrary code."""
    pickles = [n for n in names if n.lower().endswith(PICKLE_SUFFIXES)]
    if pickles:
        raise InvalidInput(
            f"{where} contains pickle weights ({', '.join(pickles)}): pickle weights are not accepted; "
            f"re-save with safetensors (only safetensors are accepted, because loading a pickle can run "
            f"arbitrary code): `model.from_pretrained(dir).save_pretrained(out_dir, "
            f"safe_serialization=True)` "
            f"(or `safetensors.torch.save_file(state_dict, 'model.safetensors')`), delete the "
            f"pickle files, and import again."
        )


def lora_scale(config: Mapping[str, object], r: int, alpha: object = None) -> float:
    """alpha / r, or alpha / sqrt(r) for rsLoRA (PEFT's definition)."""
    a = float(config.get("lora_alpha", r) if alpha is None else alpha)  # type: ignore[arg-type]
    return a / math.sqrt(r) if config.get("use_rslora") else a / r


def read_adapter(path: Path, *, max_rank: int | None = None, name: str | None = None) -> PeftAdapter:
    """Read a PEFT LoRA folder, refusing what serving cannot apply: other PEFT methods, DoRA,
    pickle weights, embedding or convolution LoRA, trained biases and `modules_to_save`, and
    ranks above `max_rank`. `name` (the adapter's) replaces the folder's name in messages."""
    who = f"adapter {name!r}" if name else f"{path.name}/"
    config = read_json_object(path / ADAPTER_CONFIG, what="a PEFT adapter")
    kind = str(config.get("peft_type") or "LORA").upper()
    if kind != "LORA":
        raise InvalidInput(
            f"{who} is a {config['peft_type']} adapter; only LoRA adapters can be served. "
            f"Train it with peft.LoraConfig."
        )
    if config.get("use_dora"):
        raise InvalidInput(f"{who} uses DoRA, which is not served; retrain it with use_dora=False.")
    weights = path / ADAPTER_WEIGHTS
    if not weights.is_file():
        refuse_pickles(who, sorted(p.name for p in path.iterdir()) if path.is_dir() else [])
        raise InvalidInput(
            f"{who} has no {ADAPTER_WEIGHTS}. Save the adapter with "
            f"`peft_model.save_pretrained(dir, safe_serialization=True)` and import that folder."
        )
    modules = _modules(read_safetensors_header(weights), config, who)
    if max_rank is not None:
        for m in modules:
            if m.rank > max_rank:
                raise InvalidInput(
                    f"{who} has rank {m.rank} on {m.name!r}, above the largest rank served ({max_rank}, "
                    f"CONSTELLATION_ENGINE__MAX_LORA_RANK): retrain with r <= {max_rank} or raise the limit."
                )
    served = tuple(m for m in modules if not is_unread(m.name))
    if not served:
        raise InvalidInput(f"{who} adapts no module that serving reads; target the attention/MLP linears.")
    return PeftAdapter(weights, config, served, tuple(m for m in modules if is_unread(m.name)))


def _modules(header: Mapping[str, TensorInfo], config: Mapping[str, object], who: str) -> list[LoRAModule]:
    """Pair lora_A / lora_B per module and refuse every other tensor, naming its kind."""
    keys: dict[str, dict[str, str]] = {}
    for key in header:
        if key.endswith(_EMBEDDING):
            module = key.removeprefix(PEFT_PREFIX).rsplit(".", 1)[0]
            raise InvalidInput(
                f"{who} adapts the embedding {module!r} (lora_embedding_A/B); serving applies LoRA to "
                f"linear layers only: retrain without it in target_modules."
            )
        factor = "A" if key.endswith(_A) else "B" if key.endswith(_B) else None
        if factor is None:
            raise InvalidInput(
                f"{who} holds {key!r}, which is not a LoRA factor (a trained bias, a module in "
                f"modules_to_save, or a whole layer that save_embedding_layers kept); serving applies "
                f"lora_A/lora_B only: retrain with bias='none' and no modules_to_save, and save with "
                f"save_embedding_layers=False."
            )
        keys.setdefault(key.removesuffix(_A if factor == "A" else _B), {})[factor] = key
    alphas = dict(config.get("alpha_pattern") or {})  # type: ignore[call-overload]
    out: list[LoRAModule] = []
    for stem, pair in keys.items():
        module = stem.removeprefix(PEFT_PREFIX)
        if set(pair) != {"A", "B"}:
            raise InvalidInput(
                f"{who} has only one of lora_A/lora_B for module {module!r}; re-save it with PEFT."
            )
        a, b = header[pair["A"]].shape, header[pair["B"]].shape
        if len(a) != 2 or len(b) != 2:
            raise InvalidInput(
                f"{who} adapts {module!r} as a convolution (lora_A {list(a)}); serving applies LoRA to "
                f"linear layers only: retrain without it in target_modules."
            )
        if a[0] != b[1]:
            raise InvalidInput(
                f"Module {module!r}: lora_A {list(a)} and lora_B {list(b)} disagree on the rank; "
                f"the adapter file is inconsistent, re-save it with PEFT."
            )
        # The rank is the tensor's (rank_pattern is already reflected in the shapes).
        alpha = next((v for k, v in alphas.items() if module == k or module.endswith("." + k)), None)
        out.append(LoRAModule(module, pair["A"], pair["B"], a, b, lora_scale(config, a[0], alpha)))
    if not out:
        raise InvalidInput(f"{who} holds no LoRA weights (no *.lora_A.weight keys); re-save it with PEFT.")
    return out


def is_unread(module: str) -> bool:
    """A module that no served forward reads (see UNREAD), under any wrapper prefix."""
    parts = module.split(".")
    return any(p in parts[:2] for p in UNREAD)


def serves(module: str, task: str) -> bool:
    """Whether the engine for a base of `task` wraps `module` (an HF module path) in a LoRA layer."""
    if task == "causal-lm":
        return module.rpartition(".")[2] in DECODER_TARGETS
    return encoder_target(strip_wrapper(module)) is not None


def encoder_target(path: str) -> str | None:
    """Every attention/MLP linear inside an encoder layer, named as in HF's BertModel."""
    return path if ".layer." in path and path.endswith(ENCODER_TARGETS) else None


def strip_wrapper(module: str) -> str:
    """`module` without a task model's wrapper prefix (`bert.encoder...` -> `encoder...`)."""
    for prefix in ENCODER_WRAPPERS:
        if module.startswith(prefix):
            return module.removeprefix(prefix)
    return module


def check_adapter_fits_base(
    adapter_dir: Path,
    base_dir: Path,
    *,
    base_name: str | None = None,
    max_rank: int | None = None,
    task: str | None = None,
) -> list[str]:
    """Raise InvalidInput unless the adapter is servable (`read_adapter`), its declared base and
    LoRA shapes match `base_dir`, and (given the base's `task`) its engine adapts every module
    it targets. Returns notes for the model card (weights carried but not served)."""
    adapter = read_adapter(adapter_dir, max_rank=max_rank)
    declared = adapter.config.get("base_model_name_or_path")
    if base_name is not None and not names_match(str(declared or ""), base_name):
        raise InvalidInput(
            f"The adapter was trained on {declared!r} (base_model_name_or_path in {ADAPTER_CONFIG}) "
            f"but is being attached to {base_name!r}. Attach it to the base it was trained on, "
            f"or fix base_model_name_or_path if the two are the same model."
        )
    base = _base_weights(base_dir)
    transposed = bool(adapter.config.get("fan_in_fan_out"))  # GPT-2 style Conv1D stores weights [in, out]
    for m in (*adapter.modules, *adapter.unread):
        _check_module(m, transposed=transposed, base=base)
    if task is not None:
        cannot = [m.name for m in adapter.modules if not serves(m.name, task)]
        if cannot:
            raise InvalidInput(
                f"The adapter adapts {cannot[:3]}, which the {task} engine does not wrap with LoRA "
                f"layers; target the attention/MLP linear layers of the base."
            )
    return adapter.notes()


def names_match(declared: str, base_name: str) -> bool:
    """Compare the last path component case-insensitively; an empty side is not evidence."""
    d, b = _last_component(declared), _last_component(base_name)
    return not d or not b or d == b


def _last_component(name: str) -> str:
    return name.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1].strip().lower()


def _base_weights(base_dir: Path) -> dict[str, tuple[int, ...]]:
    """Module path -> weight shape over the base's top-level safetensors files (shards included)."""
    files = sorted(base_dir.glob("*.safetensors"))
    if not files:
        raise InvalidInput(f"The base model directory {base_dir} has no .safetensors weights.")
    out: dict[str, tuple[int, ...]] = {}
    for f in files:
        for name, info in read_safetensors_header(f).items():
            if name.endswith(".weight"):
                out[name.removesuffix(".weight")] = info.shape
    return out


def _check_module(m: LoRAModule, *, transposed: bool, base: dict[str, tuple[int, ...]]) -> None:
    have = _find_base(m.name, base)
    if have is None:
        raise InvalidInput(
            f"The adapter targets module {m.name!r}, which the base model does not have. "
            f"Attach it to the base it was trained on."
        )
    a, b = m.a_shape, m.b_shape
    # Linear: base [out, in]; Conv1D stores [in, out].
    want = (a[1], b[0]) if transposed else (b[0], a[1])
    if tuple(have) != want:
        raise InvalidInput(
            f"Module {m.name!r}: the adapter's lora_A {list(a)} and lora_B {list(b)} need a base weight "
            f"{list(want)}, but the base has {list(have)}. The adapter was trained on a different "
            f"base model; attach it to that one."
        )


def _find_base(module: str, base: dict[str, tuple[int, ...]]) -> tuple[int, ...] | None:
    """Exact match, else the base module that equals it up to a wrapper prefix (`bert.`, `model.`)."""
    if module in base:
        return base[module]
    hits = [m for m in base if module.endswith("." + m) or m.endswith("." + module)]
    return base[max(hits, key=len)] if hits else None
