"""The zero-shot classification service: an HTTP layer (FastAPI) over a batching engine."""
