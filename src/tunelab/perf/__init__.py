"""Performance: FLOPs accounting, memory planning."""
