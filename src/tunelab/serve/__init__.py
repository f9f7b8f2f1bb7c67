"""`tunelab serve`: the OpenAI-compatible app, the engine that schedules generations, vLLM as a backend."""
