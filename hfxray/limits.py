"""Ranges hfxray holds numbers to, shared by the command line and the run configuration."""

SEED_MAX = 2**32 - 1  # numpy's and scikit-learn's seeds are 32-bit
