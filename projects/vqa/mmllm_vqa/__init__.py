"""2D VQA with a METER-style model and the frozen LLM block (projects/vqa)."""
