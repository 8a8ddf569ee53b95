"""Embeddings and classification: encoder bases, micro-batched, in process or in workers."""
