"""A tiny *trained* causal LM for the fine-tuning tests: a BPE tokenizer and a ~1M-parameter
Llama, both trained from scratch for seconds on the text the caller gives. Unlike `toy_lm`'s
random weights, its loss has somewhere to go, so a LoRA run on it can be seen to learn. A test
fixture, not a model (the demo's chat base is SmolLM2).
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from constellation.errors import InvalidInput

SPECIALS = ["<pad>", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
CARD = """---
license: apache-2.0
library_name: transformers
pipeline_tag: text-generation
tags: [toy, constellation-tests]
---

# tiny-llama (a toy)

This is a **toy** causal language model built for Constellation's fine-tuning tests. It is a
{n_params:,}-parameter Llama-architecture model with a {vocab}-token BPE tokenizer, both trained
from scratch on this machine for {steps} steps (about {seconds:.0f} s) on a few kilobytes of text
(final training loss {loss:.2f}). Its output is mostly fluent-looking nonsense. Do not use it for
anything but exercising the training, serving, adapter and billing machinery.
"""


@dataclass(frozen=True, slots=True)
class TinyLM:
    """What was built; written next to the weights as training.json."""

    out_dir: Path
    n_params: int
    vocab_size: int
    steps: int
    final_loss: float
    seconds: float


def _tokenizer(text: str, vocab_size: int) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(text.splitlines(), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        additional_special_tokens=SPECIALS[3:],
        chat_template=CHAT_TEMPLATE,
        model_max_length=256,
    )


def _model(tok: PreTrainedTokenizerFast) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=128,
        intermediate_size=352,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    return LlamaForCausalLM(config)


def _blocks(tok: PreTrainedTokenizerFast, text: str, block: int) -> torch.Tensor:
    """The corpus as one token stream cut into training rows: [N, block]."""
    ids: list[int] = []
    for para in text.split("\n\n"):
        ids += tok(para.strip(), add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    n = len(ids) // block
    if n < 2:
        raise InvalidInput(f"the corpus gives {len(ids)} tokens; at least {2 * block} are needed")
    return torch.tensor(ids[: n * block]).view(n, block)  # [N, block]


def _train(
    model: LlamaForCausalLM, rows: torch.Tensor, *, seed: int, seconds: float, max_steps: int
) -> tuple[int, float]:
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.1, 1.0 - s / max_steps))
    model.train()
    start, step, loss = time.perf_counter(), 0, torch.tensor(float("nan"))
    while step < max_steps and time.perf_counter() - start < seconds:
        batch = rows[torch.randint(len(rows), (16,), generator=gen)]  # [16, block]
        loss = model(input_ids=batch, labels=batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        step += 1
    return step, float(loss.detach())


def build_tiny_lm(
    corpus: Path, out_dir: Path, *, seed: int = 0, seconds_budget: float = 60, max_steps: int = 600
) -> TinyLM:
    """Train the toy LM on `corpus` and save it (safetensors, tokenizer, card) into `out_dir`.

    Stops after `max_steps` or `seconds_budget`, whichever comes first; the same seed gives the
    same weights only when `max_steps` is reached within the budget.
    """
    text = Path(corpus).read_text(encoding="utf-8")
    started = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        tok = _tokenizer(text, vocab_size=1024)
        model = _model(tok)
        steps, loss = _train(
            model, _blocks(tok, text, 64), seed=seed, seconds=seconds_budget, max_steps=max_steps
        )
    info = TinyLM(
        out_dir=Path(out_dir),
        n_params=sum(p.numel() for p in model.parameters()),
        vocab_size=len(tok),
        steps=steps,
        final_loss=loss,
        seconds=time.perf_counter() - started,
    )
    _save(model, tok, info)
    return info


def _save(model: LlamaForCausalLM, tok: PreTrainedTokenizerFast, info: TinyLM) -> None:
    """Write into a temporary sibling, then rename: a half-built model never looks finished."""
    out_dir = info.out_dir
    if out_dir.exists() and any(out_dir.iterdir()):
        raise InvalidInput(f"{out_dir} already exists and is not empty; choose a new output directory")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        model.eval()
        model.save_pretrained(str(tmp), safe_serialization=True)
        tok.save_pretrained(str(tmp))
        card = CARD.format(
            n_params=info.n_params,
            vocab=info.vocab_size,
            steps=info.steps,
            seconds=info.seconds,
            loss=info.final_loss,
        )
        (tmp / "README.md").write_text(card)
        meta = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(info).items()}
        (tmp / "training.json").write_text(json.dumps(meta, indent=2) + "\n")
        if out_dir.exists():
            out_dir.rmdir()
        tmp.rename(out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
