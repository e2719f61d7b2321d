"""Multimodal building blocks shared by the projects (METER-style backbone, encoders, heads)."""
