"""The engine: tensors only -- model loading, multi-LoRA layers, adapter cache and schedulers.

It imports no FastAPI, SQLAlchemy or economy code; callers hand it specs and texts.
"""
