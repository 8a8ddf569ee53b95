"""The engine: tensors only -- model loading, multi-LoRA layers, adapter cache and schedulers.

It imports no FastAPI, SQLAlchemy or economy code; callers hand it specs and texts.

Layout (one concept per module):
  spec.py         what the engine is asked to serve: bases, adapters (the engine's input)
  pool.py         loaded bases within a memory budget, least recently used out
  fairness.py     deficit round-robin across tenants, shared by both pipelines
  attribution.py  a step's busy time split over its requests by their tokens
  bounds.py       inputs bounded before they are tokenised
  lora/           layer.py (multi-LoRA linears), adapters.py (PEFT weights read into host
                  memory), cache.py (adapters: disk -> host -> slots, pinned while in use)
  models/         config.py, layers.py (shared), llama.py, gpt2.py (one per causal-LM family),
                  causal_lm.py (either family, loaded), bert.py (BERT's packed-token forward)
  encoder/        interface.py (results), model.py (a loaded encoder base), batcher.py
                  (micro-batching), engine.py (async interface), remote.py (worker
                  processes), memory.py (heap trimming)
  decoder/        sequence.py, scheduler.py, runner.py, engine.py (nano-vllm's concepts),
                  kvcache.py, sampling.py, detokenizer.py, tokens.py (prompt side),
                  structured.py (grammar masks)

Glossary (each word means one thing across the package):
  base           a loaded model (encoder or causal LM) that adapters run on
  adapter        a LoRA adapter on one base; NO_ADAPTER (-1) is a row without one
  slot           one adapter's place in the stacked A/B weights of a base's LoRA layers
  pin            an adapter held in its slot while requests that use it are in flight
  model cache    the loaded bases within a memory budget, least recently used out
  adapter cache  adapters in host memory (LRU) and in slots (LRU)
  block          a fixed run of token positions in the decoder's paged KV cache;
                 kv_index is a token's flat index into it (block * block_size + offset)
  pooling        sentence-transformers' token states -> one embedding (mean, cls, ...)
  packed         tokens of several sequences laid end to end, without padding
  prepacked      a linear weight copied into oneDNN's layout for faster CPU GEMMs
  row            one input of an encoder batch, or one token row of a LoRA layer's input
  op             what an encoder request asks for: "embed" or "classify"
  prepare        decoder: validate and tokenise a request into a `Prepared`
  step           one forward of a batch, whose busy time is attributed to its requests
  sequence (Seq) one generation request inside the decoder loop; its `Work` is its tokens
                 in one step, and each `Delta` one streamed piece of its answer
"""
