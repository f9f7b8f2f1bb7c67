"""Data side: sources, validation, prompt templates, tokenization with label masks, synthetic tasks."""
