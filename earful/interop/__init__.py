"""Interchange with Hugging Face `transformers` (optional) and feature extraction."""
