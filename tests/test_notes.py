"""Notes on trials and studies: what ran and how it ended, the study's spec, rewritten rather than appended."""

from __future__ import annotations

import optuna
import pytest
from optuna.distributions import FloatDistribution

from test_dashboard import make_study

from mt_tune.search.notes import read_note, study_note, trial_note, write_trial_note

pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")  # set_metric_names


def test_trial_note_says_what_ran_and_how_it_ended():
    storage = optuna.storages.InMemoryStorage()
    study = make_study(storage)
    note = read_note(study, study.trials[0], storage)
    assert note.startswith("## Trial 0 · complete · bleu 7.25")
    for text in ("| stop reason | diverged |", "| best step | 200 of 300 steps |", "| BLEU / chrF | 7.25 / 30.50 |",
                 "| tokens/s | 2,346 |", "| parameters | 1.2M |", "`train.lr=0.001`",
                 "- model: d_model 64, heads 2, layers 1+1, ffn 128", "lr 0.001", "max_steps 300"):
        assert text in note, text
    # rewriting a note replaces it (a new version), it does not append
    write_trial_note(study, study.trials[0].number, storage)
    assert read_note(study, study.trials[0], storage) == note


def test_trial_note_of_a_foreign_study_uses_what_the_trial_has():
    trial = optuna.trial.create_trial(value=1.0, params={"x": 0.5}, distributions={"x": FloatDistribution(0, 1)})
    note = trial_note(trial, None)
    assert "· complete · value 1" in note and "| stop reason | - |" in note and "| wall time | - |" in note
    assert "Resolved config" not in note


def test_study_note_holds_the_spec():
    study = make_study(optuna.storages.InMemoryStorage())
    note = read_note(study)
    assert note.startswith("# dash") and "```yaml" in note and "train.lr:" in note
    assert note == study_note(study)
