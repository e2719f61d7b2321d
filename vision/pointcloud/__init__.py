"""Point-cloud classification: a Point-BERT-style encoder with the frozen LLM block."""
