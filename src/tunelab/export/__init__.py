"""Handing a tuned model to others: merge, model folders (card + metadata), HF / adapter / GGUF + Ollama exports."""
