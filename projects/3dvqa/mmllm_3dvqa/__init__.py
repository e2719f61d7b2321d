"""3D VQA (SQA3D / ScanQA formats) with the frozen LLM block after the 3D-language fusion."""
