"""LoRA: multi-adapter linear layers, PEFT adapters read into host memory, the adapter cache."""
