"""Model architectures: shared layers and one module per family (Llama-like, GPT-2, BERT)."""
