"""Baselines on identical data and compute: objectives compared over online iterations, in one process."""
