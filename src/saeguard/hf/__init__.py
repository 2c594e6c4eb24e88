"""Hugging Face glue: layers, models, prompts, corpora, batching, fingerprints."""
