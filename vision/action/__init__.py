"""Action recognition: a VideoMAE-style video ViT with the frozen LLM block."""
