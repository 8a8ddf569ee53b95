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
"""
