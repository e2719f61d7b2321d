"""Image–text retrieval with a METER-style model and the frozen LLM block (projects/retrieval)."""
