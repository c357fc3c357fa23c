"""Thin adapters from training frameworks (Lightning, Hugging Face) to the recorder core."""
