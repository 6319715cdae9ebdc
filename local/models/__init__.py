"""Audio-LLM building blocks: encoders, connectors, the assembled model and its tokenizer."""
