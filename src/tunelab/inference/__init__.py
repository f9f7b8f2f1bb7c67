"""Using models: TARGET resolution, prompts, batched generation and the terminal chat (shared by training samples,
evaluation, serving and export)."""
