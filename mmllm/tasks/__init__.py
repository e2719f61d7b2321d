"""Tasks shared by several projects (VL pretraining)."""
