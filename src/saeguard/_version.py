"""The package version (recorded in every artifact)."""

__version__ = "0.2.0"
