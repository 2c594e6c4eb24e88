"""Experiments built on the core: choosing the default SAE, gate quality, attacks."""
