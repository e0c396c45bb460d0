"""Data: document sources, tokenization into nanoGPT-style token shards, and loading them back."""
