"""Offline reference data: registry-fetched sources, corpora with fixed splits, built MCQ sets."""
