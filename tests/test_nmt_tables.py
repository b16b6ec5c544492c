"""benchmarks/nmt_tables.py: the table objective and the CLI, on small synthetic tables, through
real Optuna studies in a real storage (SQLite files)."""

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from mt_tune.search.repeats import NEIGHBOUR_OF_ATTR, nearest_untried

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "nmt_tables.py"
_spec = importlib.util.spec_from_file_location("nmt_tables", SCRIPT)
nt = importlib.util.module_from_spec(_spec)
sys.modules["nmt_tables"] = nt  # dataclasses look their module up there
_spec.loader.exec_module(nt)

# id 0 is the best (BLEU 30) but has a plateau before its minimum (index 4): a patience of 2
# stops it after 4 checkpoints, before it has a BLEU. The others reach their minimum at index 1.
PLATEAU = [10.0, 8.0, 8.5, 9.0, 7.0, 7.5, 8.0]
EARLY = [12.0, 9.0, 9.5, 10.0, 10.5, 11.0]
MISSING = (4, 0.001, 2)  # the one combination of the 2 x 2 x 2 grid not trained


def scratch_table(path: Path) -> Path:
    configs = []
    combos = [(layers, lr, r) for layers in (2, 4) for lr in (0.0003, 0.001) for r in (1, 2)]
    for i, (layers, lr, r) in enumerate(c for c in combos if c != MISSING):
        curve = PLATEAU if i == 0 else [v + i for v in EARLY]
        configs.append({"id": i, "hyperparams": {"num_layers": layers, "initial_lr": lr, "r": r, "const": 5},
                        "dev_bleu": 30.0 if i == 0 else 20.0 + i, "dev_ppl": min(curve), "ppl_curve": curve})
    configs.append({"id": 99, "hyperparams": {"num_layers": 2, "initial_lr": 0.0003, "r": 1, "const": 5},
                    "dev_bleu": 1.0, "dev_ppl": 3.0})  # no curve: cannot be replayed
    path.write_text(json.dumps({"corpus": "xx-en", "checkpoint_every_updates": 100, "configs": configs}))
    return path


def finetune_table(path: Path) -> Path:
    configs = []
    for i, (lr, r) in enumerate((lr, r) for lr in (1e-4, 2e-4) for r in (2, 16)):
        bleu = [10.0 + i, 14.0 + i, 12.0 + i, 11.0 + i, 10.0, 9.0, 8.0, 7.0, 6.0, 5.0]
        configs.append({"id": i, "hyperparams": {"initial_lr": lr, "r": r},
                        "ppl_curve": [5.0, 4.0, 3.9, 3.8, 3.85, 3.9, 4.0, 4.1, 4.2, 4.3], "bleu_curve": bleu})
    path.write_text(json.dumps({"corpus": "ft-en", "configs": configs}))
    return path


def test_the_grid_is_one_categorical_per_hyperparameter_and_a_missing_combination_maps_to_the_nearest(tmp_path):
    table = nt.Table(scratch_table(tmp_path / "t.json"))
    assert [d.names for d in table.dims] == [("num_layers",), ("initial_lr",), ("r",)]  # const dropped
    assert [d.field for d in table.dims[:2]] == ["model.enc_layers", "train.lr"]
    assert table.dims[2].field in nt.STAND_INS and table.dims[2].choices == [1, 2]  # no plausible field for r
    assert (len(table.configs), table.skipped, table.grid_size) == (7, 1, 8)
    assert table.best_bleu == 30.0 and table.mean_len == pytest.approx((7 + 6 * 6) / 7)

    key = lambda *values: tuple((v,) for v in values)  # noqa: E731
    spec = nt.policy_spec(table, "mt-tune", seed=0, budget=10)
    objective = nt.TableObjective(table, spec)
    params = lambda k: {d.field: d.choices[d.values.index(v)] for d, v in zip(table.dims, k)}  # noqa: E731
    nearest = lambda k: table.decode(nearest_untried(spec.search, params(k), objective.unavailable))  # noqa: E731
    assert not objective.unavailable(params(key(2, 0.001, 1))) and objective.unavailable(params(key(*MISSING)))
    neighbours = {key(2, 0.001, 2), key(4, 0.0003, 2), key(4, 0.001, 1)}  # one step away
    assert nearest(key(*MISSING)) in neighbours
    objective.tried = {table.by_key[k].id for k in neighbours}
    assert nearest(key(*MISSING)) not in neighbours | {key(*MISSING)}
    objective.tried.add(table.by_key[key(2, 0.001, 1)].id)
    assert objective.unavailable(params(key(2, 0.001, 1)))  # tried: not again


def trained(study: optuna.Study) -> list:
    """The trials that trained a configuration (a remapped suggestion is a FAIL trial, untrained)."""
    return study.get_trials(states=(optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED))


def test_a_remapped_suggestion_is_recorded_untrained_and_its_neighbour_trains_under_its_own_values(tmp_path):
    table = nt.Table(scratch_table(tmp_path / "t.json"))
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    records = nt.run_study(table, "random", seed=5, budget=100, storage_url=url)
    assert sorted(r.cfg.id for r in records) == sorted(c.id for c in table.configs)  # each once
    study = optuna.load_study(study_name="nmt-xx-en-random-5", storage=url)
    failed = study.get_trials(states=(optuna.trial.TrialState.FAIL,))
    assert failed and all(not t.intermediate_values and "config_id" not in t.user_attrs for t in failed)
    by_id = {c.id: c for c in table.configs}
    for t in trained(study):  # the study records the values that were trained, never a neighbour's result
        assert table.decode(t.params) == by_id[t.user_attrs["config_id"]].key
    after = {t.number + 1: table.by_key[table.decode(t.user_attrs["queued"])].id for t in failed}  # runs next
    numbered = {t.number: t for t in study.trials}
    for n, cid in after.items():
        assert numbered[n].user_attrs["config_id"] == cid and NEIGHBOUR_OF_ATTR in numbered[n].user_attrs
    assert sum(r.mapped for r in records) == len(failed)


def test_a_trial_stopped_before_its_minimum_has_no_bleu_and_is_never_the_pick(tmp_path):
    table = nt.Table(scratch_table(tmp_path / "t.json"))
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    sets = {"mt-tune": {"stopping.patience": 2, "pruner.type": "none"}}
    records = nt.run_study(table, "mt-tune", seed=3, budget=100, storage_url=url, sets=sets)
    assert sorted(r.cfg.id for r in records) == sorted(c.id for c in table.configs)  # each once

    study = optuna.load_study(study_name="nmt-xx-en-mt-tune-3", storage=url)
    assert study.user_attrs["spec"]["stopping"]["patience"] == 2
    assert set(study.user_attrs["spec"]["search"]) == {d.field for d in table.dims}
    trials = {t.user_attrs["config_id"]: t for t in trained(study)}
    for r in records:
        t = trials[r.cfg.id]
        assert r.used == 4 and t.user_attrs["steps"] == 400 and len(t.intermediate_values) == 4
        assert t.user_attrs["stop_reason"] == "diverged" and not r.pruned
        if r.cfg.id == 0:  # stopped at 4 checkpoints, its minimum is the 5th: no BLEU to tell
            assert r.bleu is None and "bleu" not in t.user_attrs and t.state == optuna.trial.TrialState.PRUNED
        else:
            assert r.bleu == t.user_attrs["bleu"] == t.value == r.cfg.dev_bleu
    assert sum(NEIGHBOUR_OF_ATTR in t.user_attrs for t in trained(study)) == sum(r.mapped for r in records)

    m = nt.measure(table, records, budget=100)
    assert not m["found"] and m["ftc"] == 7 and m["no_credit"] == 1
    assert m["regret"] == pytest.approx(30.0 - 26.0)  # the best credited one, never id 0's 30
    assert m["used"] == 28 and m["full"] == 7 + 6 * 6
    assert m["ftc_compute"] == pytest.approx(28 / table.mean_len)

    plain = nt.measure(table, nt.run_study(table, "random", seed=3, budget=100, storage_url=url), budget=100)
    assert plain["found"] and plain["used"] == plain["full"] and plain["regret"] == 0


def test_the_budget_cut_counts_what_a_running_trial_had_by_then(tmp_path):
    table = nt.Table(scratch_table(tmp_path / "t.json"))
    by_id = {c.id: c for c in table.configs}
    records = [nt.Record(by_id[3], 6, False, False), nt.Record(by_id[0], 7, False, False)]
    # 6 + 4 checkpoints: trial 2 has not reached its minimum (5 checkpoints) at the cut
    assert nt.measure(table, records, budget=10 / table.mean_len)["regret"] == pytest.approx(30.0 - 23.0)
    assert nt.measure(table, records, budget=11 / table.mean_len)["regret"] == 0
    first = nt.measure(table, records, budget=1)
    assert first["ftc"] == 2 and first["ftc_compute"] == pytest.approx((6 + 5) / table.mean_len)
    pruned = [nt.Record(by_id[0], 7, True, False)]  # pruned after its minimum: still no BLEU
    assert nt.measure(table, pruned, budget=100)["no_pick"]


def test_the_finetuning_table_credits_the_best_bleu_of_the_checkpoints_run(tmp_path):
    table = nt.Table(finetune_table(tmp_path / "ft.json"))
    assert not table.scratch and table.best_bleu == 17.0
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    records = nt.run_study(table, "mt-tune", seed=0, budget=100, storage_url=url)
    study = optuna.load_study(study_name="nmt-ft-en-mt-tune-0", storage=url)
    assert study.direction == optuna.study.StudyDirection.MAXIMIZE
    for r in records:
        assert r.used < len(r.cfg.ppl)  # neither loss nor BLEU improves after the 4th: stopped
        if not r.pruned:
            assert r.bleu == max(r.cfg.bleu[:r.used]) == 14.0 + r.cfg.id


def run_cli(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True,
                          timeout=300)


def test_the_cli_prints_one_json_object_with_every_policy(tmp_path):
    paths = [scratch_table(tmp_path / "a.json"), finetune_table(tmp_path / "b.json")]
    done = run_cli(*paths, "--seeds", 3, "--budget", 2, "--jobs", 1, "--json")
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert set(out["tables"]) == {"xx-en", "ft-en"}
    keys = {"ftc_mean", "ftc_sd", "ftc_compute_mean", "regret_mean", "regret_sd", "checkpoints_fraction"}
    for corpus, n, best in (("xx-en", 7, 30.0), ("ft-en", 4, 17.0)):
        t = out["tables"][corpus]
        assert t["n_configs"] == n and t["best_bleu"] == best
        assert set(t["policies"]) == {"random", "random+stop", "tpe", "mt-tune"}
        for name, p in t["policies"].items():
            assert keys <= set(p)
            assert p["regret_mean"] >= 0 and p["ftc_mean"] >= 1 and 0 < p["checkpoints_fraction"] <= 1
        for name in ("random", "tpe"):
            assert t["policies"][name]["checkpoints_fraction"] == 1
    assert out["tables"]["xx-en"]["policies"]["mt-tune"]["checkpoints_fraction"] < 1


def test_a_file_that_is_not_a_table_is_refused_with_exit_2(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"corpus": "x", "configs": [{"id": 0, "ppl_curve": [3.0]}]}))
    done = run_cli(bad, "--json")
    assert done.returncode == 2 and "configs[0]" in done.stderr and "Traceback" not in done.stderr
    done = run_cli(scratch_table(tmp_path / "t.json"), "--set", "mt-tune:stopping.patience=0")
    assert done.returncode == 2 and "patience" in done.stderr and "Traceback" not in done.stderr


def test_the_pruner_sees_a_loss_per_unit_of_text_when_the_vocabulary_is_searched(tmp_path):
    """Perplexity per subword does not compare across vocabularies (a larger one has fewer,
    harder subwords); mt-tune's trainer reports val_loss_per_char for that. The replay scales
    ln ppl by the dev set's relative subword count, estimated from configs differing only in
    the vocabulary: here the 8,000 vocabulary's dev set is 0.8x as long as the 1,000 one's."""
    configs = []
    for i, (layers, bpe) in enumerate((layers, bpe) for layers in (2, 4, 6) for bpe in (1000, 8000)):
        per_text = 2.0 + 0.1 * layers  # total dev log-likelihood / length(1000): same for both vocabularies
        ppl = math.exp(per_text / (1.0 if bpe == 1000 else 0.8))
        configs.append({"hyperparams": {"num_layers": layers, "bpe_symbols": bpe}, "dev_bleu": 10.0 + i,
                        "ppl_curve": [ppl * 1.5, ppl, ppl * 1.1]})
    path = tmp_path / "v.json"
    path.write_text(json.dumps({"corpus": "vv-en", "configs": configs}))
    table = nt.Table(path)
    assert table.relative_lengths == {1000: 1.0, 8000: pytest.approx(0.8)}
    spec = nt.policy_spec(table, "random", 0, 10)
    study = optuna.create_study(direction=spec.direction, sampler=optuna.samplers.RandomSampler(seed=0))
    nt.replay(study, nt.TableObjective(table, spec))  # each config once (untried ones are mapped to)
    # What the pruner sees at the best checkpoint (the 2nd): the stand-in BLEU of the loss per unit of text
    by = {table.configs[t.user_attrs["config_id"]].key: t.intermediate_values[2] for t in trained(study)}
    assert len(by) == 6
    for layers in (2, 4, 6):  # the same model quality reads the same under either vocabulary
        assert by[((layers,), (1000,))] == pytest.approx(by[((layers,), (8000,))], rel=1e-4)
    # and it is lower where the loss is higher: a worse model, a lower BLEU
    assert by[((6,), (1000,))] < by[((4,), (1000,))] < by[((2,), (1000,))]


def test_a_from_scratch_study_learns_from_bleu_and_its_pruner_sees_a_stand_in_from_the_loss(tmp_path):
    """The trial's value is its recorded BLEU (the sampler learns from translation quality, not
    from the loss); each checkpoint shows the stand-in BLEU of its loss, fitted on the table."""
    table = nt.Table(scratch_table(tmp_path / "t.json"))
    a, b = table.stand_in
    assert b < 0
    spec = nt.policy_spec(table, "random", 0, 10)
    assert spec.metric == "bleu" and spec.direction == "maximize"
    study = optuna.create_study(direction=spec.direction, sampler=optuna.samplers.RandomSampler(seed=0))
    assert len(nt.replay(study, nt.TableObjective(table, spec))) == len(table.configs)
    for t in trained(study):
        cfg = table.configs[t.user_attrs["config_id"]]
        assert t.value == cfg.dev_bleu
        curve = [t.intermediate_values[(i + 1) * table.every] for i in range(len(cfg.ppl))]
        assert curve == pytest.approx([a + b * math.log(p) for p in cfg.ppl])
