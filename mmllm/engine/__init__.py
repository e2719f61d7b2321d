"""Training engine shared by every project: DeepSpeed (ZeRO 0-3, bf16), resumable runs."""
