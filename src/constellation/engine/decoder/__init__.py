"""Generation: continuous batching of causal LMs over a paged KV cache, streamed."""
