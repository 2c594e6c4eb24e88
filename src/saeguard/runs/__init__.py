"""Resumable runs over grids of configurations: sweeps and comparisons."""
