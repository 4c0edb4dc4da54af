"""HTTP layer: OpenAI request/response extensions (no tensors here)."""
