"""Optuna studies: specs, the trial objective, storages, workers, promotion, export, reports."""
