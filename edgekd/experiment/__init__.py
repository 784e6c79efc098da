"""Experiments over many compress runs: ablations, compression sweeps, Monte Carlo, retrieval, shift."""
