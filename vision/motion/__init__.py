"""Motion forecasting: a VectorNet-style model with the frozen LLM block on polyline tokens."""
