"""Evaluation of trained policies: the paper's pairwise win-rate matrix and per-policy statistics."""
