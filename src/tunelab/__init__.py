"""tunelab: instruction fine-tuning of causal LMs with LoRA / QLoRA from one config and one CLI."""

__version__ = "0.1.0"
