"""Using models: batched generation (shared by training samples, evaluation and serving)."""
