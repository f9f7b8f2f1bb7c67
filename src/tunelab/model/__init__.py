"""Model side: loading (dtype, device, quantization), adapters, parameter counts, tiny local models."""
