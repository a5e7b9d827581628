"""Tokenizer tools: train a tokenizer, extend a base tokenizer with domain tokens (scripts; see README)."""
