"""The GPT and its attention variants."""
