"""mt-tune: hyperparameter search for Transformer machine translation, built on Optuna."""

__version__ = "0.1.0"
