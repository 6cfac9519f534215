"""Monitoring and retraining end to end, with real components only: Papermill training into an MLflow SQLite registry,
the API under uvicorn in its own process (`incomeops.harness.api_server`), and replays of the held-out census through it.

The retraining tests share one covariate-shift workspace (module-scoped) and run in file order: the drift alarm on the first
500 rows, a retraining that crashes, one that promotes, one that must be refused.

The alarm rules themselves (severe single-input drift, importance-weighted drift, score drift, the estimate's caveat) have
fast tests at the end, on a synthetic population: no service, no training."""
from __future__ import annotations

import shutil
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest

from conftest import REPO
from incomeops.cleaning import CATEGORICAL_INPUTS, MODEL_INPUTS, TARGET, build_dataset
from incomeops.client import ApiClient
from incomeops.config import Settings
from incomeops.harness import api_server
from incomeops.monitoring import check, reference_profile, split_test_file
from incomeops.simulation import (
    SCENARIOS,
    first_champion,
    people,
    replay,
    run_scenario,
    scenario_settings,
    wait_for_job,
)

CRASH_FLAG = "crash-now"        # a file beside the copied notebook: Papermill runs it from its folder, and a job's notebook
CRASH_CELL = (f"import pathlib\nif pathlib.Path({CRASH_FLAG!r}).exists():\n"   # inherits no test variables (only what it needs)
              "    raise RuntimeError(\"simulated crash\")")


@pytest.fixture(scope="module")
def base_settings(tmp_path_factory, mirror) -> Settings:
    "Settings whose data comes from the mirror into a throwaway data folder; the repository's notebooks."
    root = tmp_path_factory.mktemp("monitoring-base")
    return Settings(root=root, data_dir=root / "data", reports_dir=root / "reports", notebooks_dir=REPO / "nbs", data_mirror=mirror)


def notebooks_with_crash_switch(repo: Path) -> Path:
    "A copy of nbs/ under `repo` whose training notebook raises after the final fit while the crash flag file exists."
    nbs = repo / "nbs"
    shutil.copytree(REPO / "nbs", nbs, ignore=shutil.ignore_patterns(".ipynb_checkpoints", "_proc"))
    path = nbs / "pipelines" / "train.ipynb"
    nb = nbformat.read(path, as_version=4)
    final_fit = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and "make_model(family, chosen.params, seed).fit(X, y)" in c.source]
    assert len(final_fit) == 1, "the training notebook's final-fit cell was not found"
    nb.cells.insert(final_fit[0] + 1, nbformat.v4.new_code_cell(CRASH_CELL))
    nbformat.write(nb, path)
    return nbs


@pytest.fixture(scope="module")
def covariate_shift(tmp_path_factory, base_settings):
    """A covariate-shift workspace: champion version 1 trained on people aged 35 or younger, served by the API in its own process.

    Retraining starts only when a test asks for it (POST /jobs/retrain): drift alarms do not retrain and the performance
    verdict is out of reach, so the replays cannot start one behind the tests' backs."""
    folder = tmp_path_factory.mktemp("covariate-shift")
    nbs = notebooks_with_crash_switch(folder / "repo")
    s = scenario_settings(base_settings, folder / "work", notebooks_dir=nbs, retrain_cooldown_minutes=0,
                          retrain_on_drift=False, performance_min_labelled=10**9)
    scenario = SCENARIOS["covariate_shift"]
    first = first_champion(scenario, s)
    clean = build_dataset(s).load()
    stream = split_test_file(clean[clean["split"] == "test"], s)[1]
    flag = nbs / "pipelines" / CRASH_FLAG
    with api_server(s, env={"OMP_NUM_THREADS": "1"}) as service:
        client = ApiClient(service.url, api_key=s.api_key.get_secret_value(), timeout=120)
        try: yield {"settings": s, "scenario": scenario, "stream": stream, "first_version": str(first["model_version"]), "flag": flag,
                    "service": service, "pid": service.proc.pid, "client": client, "replayed": 0}
        finally: client.close()


def served_version(client: ApiClient) -> str: return str(client.model()["version"])


def test_no_drift_replay_raises_no_alarm(tmp_path, base_settings):
    result = run_scenario("no_drift", tmp_path / "no-drift", base_settings, max_rows=2500)
    summary, timeline = result["summary"], result["timeline"]
    assert summary["first_alarm"] == "none", timeline[["rows_served", "labelled", "alarms"]]
    assert summary["retrainings"] == 0
    assert timeline["drift_share"].notna().any(), "no drift verdict was reached"
    assert timeline["checked_auc"].notna().any(), "no performance verdict was reached"


# the rows each alarm needs with the default settings, batches of 500 and labels one batch late: drift and data quality
# are judged on the first batch; performance waits for performance_min_labelled (1,000) labels, which come with the third
@pytest.mark.parametrize(("name", "alarm", "within_rows"), [("missing_column", "data_quality", 500),
                                                            ("concept_shift", "performance", 1500),
                                                            ("scrambled_columns", "performance", 1500)])
def test_each_drift_scenario_raises_its_alarm_within_the_stated_rows(tmp_path, base_settings, name, alarm, within_rows):
    result = run_scenario(name, tmp_path / name, base_settings, max_rows=within_rows)
    summary, timeline = result["summary"], result["timeline"]
    assert alarm in summary["first_alarm"].split(","), timeline[["rows_served", "labelled", "alarms"]]
    assert summary["alarm_after_rows"] <= within_rows
    if alarm == "data_quality": assert summary["retrainings"] == 0        # broken inputs are fixed at the source, not learnt
    else: assert summary["retrain_statuses"].startswith("succeeded"), summary   # a performance alarm retrains


def drift_alarm_within_500_rows(w: dict) -> None:
    "Step 1: the first 500 shifted rows raise a drift alarm, all answered by the first champion."
    timeline, log = replay(w["client"], w["stream"].head(500), w["scenario"], batch_rows=500, label_delay=1)
    w["replayed"] = 500
    first = timeline.iloc[0]
    assert first["rows_served"] == 500
    assert "drift" in first["alarms"].split(","), f"no drift alarm on the first 500 rows: {first.to_dict()}"
    assert set(log["version"].astype(str)) == {w["first_version"]}


def crash_mid_retrain_leaves_champion_serving(w: dict) -> None:
    "Step 2: a retraining that crashes after its final fit fails, raises an alert, and the champion keeps serving."
    client = w["client"]
    w["flag"].touch()
    try: job = wait_for_job(client, client.request("POST", "/jobs/retrain")["id"])
    finally: w["flag"].unlink()
    assert job["status"] == "failed", job
    assert "simulated crash" in (job["error"] or ""), job["error"]
    assert served_version(client) == w["first_version"]
    assert client.request("GET", "/ready")["model_version"] == w["first_version"]
    alerts = client.request("GET", "/monitoring/summary")["alerts"]
    assert any(a["kind"] == "retrain_failed" for a in alerts), alerts
    answer = client.predict(people(w["stream"].head(1))[0])
    assert str(answer["model_version"]) == w["first_version"] and 0 <= answer["probability"] <= 1
    assert w["service"].proc.poll() is None and w["service"].proc.pid == w["pid"]


def retrain_promotes_a_better_model_and_serves_it_without_restart(w: dict) -> None:
    "Step 3: with 2,000 more labelled shifted rows, retraining beats the champion, is promoted and served by the same process."
    client, start = w["client"], w["replayed"]
    replay(client, w["stream"].iloc[start:start + 2000], w["scenario"], batch_rows=500, label_delay=1)
    w["replayed"] = start + 2000
    before = served_version(client)
    job = wait_for_job(client, client.request("POST", "/jobs/retrain")["id"])
    assert job["status"] == "succeeded", job["error"]
    outcome = job["outcome"]
    assert outcome["decision"] == "promoted", outcome
    new = str(outcome["model_version"])
    assert new != before
    assert served_version(client) == new                       # served by the same process: no restart
    assert w["service"].proc.poll() is None and w["service"].proc.pid == w["pid"]
    gate = outcome["gate"]
    assert float(gate["challenger.roc_auc"]) > float(gate["champion.roc_auc"]), gate
    answer = client.predict(people(w["stream"].head(1))[0])
    assert str(answer["model_version"]) == new


def retrain_refuses_a_worse_model(w: dict) -> None:
    "Step 4: after 3,000 labels given the wrong way round, retraining produces a worse model, which the gate rejects."
    client, start = w["client"], w["replayed"]
    garbage = w["stream"].iloc[start:start + 3000]
    w["replayed"] = start + len(garbage)
    for i in range(0, len(garbage), 1000):                     # every true income reported the wrong way round
        batch = garbage.iloc[i:i + 1000]
        answers = client.predict_many(people(batch))
        client.feedback([{"prediction_id": a["prediction_id"], "label": "<=50K" if t else ">50K"}
                         for a, t in zip(answers, batch[TARGET].to_numpy())])
    before = served_version(client)
    job = wait_for_job(client, client.request("POST", "/jobs/retrain")["id"])
    assert job["status"] == "succeeded", job["error"]
    assert job["outcome"]["decision"] == "rejected", job["outcome"]
    assert served_version(client) == before
    assert w["service"].proc.poll() is None and w["service"].proc.pid == w["pid"]


def test_covariate_shift_alarm_then_a_crashed_a_promoted_and_a_refused_retraining(covariate_shift):
    """One story on one service, in its order (each step starts from the state the one before left, so they are one test,
    not four that would depend on their order): drift alarm, crash mid-retrain, promotion, refusal."""
    drift_alarm_within_500_rows(covariate_shift)
    crash_mid_retrain_leaves_champion_serving(covariate_shift)
    retrain_promotes_a_better_model_and_serves_it_without_restart(covariate_shift)
    retrain_refuses_a_worse_model(covariate_shift)


# Fast tests of the alarm rules (16_monitoring), on a synthetic population: no service, no training.

IMPORTANCE = {"age": 0.4, "education_num": 0.3, "hours_per_week": 0.2, "capital_gain": 0.07, "race": 0.01, "sex": 0.01,
              "native_country": 0.01}                      # the model leans on age; race, sex and country count for 1% each
CHAMPION = {"version": "1", "threshold": 0.5, "test": {"roc_auc": 0.9, "accuracy": 0.85}}


def population(n: int, seed: int) -> pd.DataFrame:
    "People with the twelve model inputs, and the scores of a model that reads age, education and hours only."
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"age": rng.integers(17, 90, n), "education_num": rng.integers(1, 17, n),
                          "capital_gain": np.where(rng.random(n) < 0.08, rng.integers(1, 99_999, n), 0),
                          "capital_loss": np.where(rng.random(n) < 0.05, rng.integers(1, 4_000, n), 0),
                          "hours_per_week": rng.integers(1, 99, n)})
    for c in CATEGORICAL_INPUTS: frame[c] = rng.choice(["a", "b", "c", "d"], n, p=[0.4, 0.3, 0.2, 0.1])
    return with_scores(frame)


def with_scores(frame: pd.DataFrame) -> pd.DataFrame:
    z = (frame["age"] - 50) / 15 + (frame["education_num"] - 9) / 4 + (frame["hours_per_week"] - 50) / 30
    return frame.assign(probability=1 / (1 + np.exp(-z)))


@pytest.fixture(scope="module")
def reference() -> tuple[dict, pd.DataFrame]:
    people = population(20_000, seed=0)
    return reference_profile(people[MODEL_INPUTS], people["probability"], importance=IMPORTANCE), population(2_000, seed=1)


def kinds(verdict) -> list[str]: return [a.kind for a in verdict.alarms]


def test_calm_window_raises_nothing_and_trusts_the_estimate(reference):
    profile, window = reference
    v = check(window, window.head(0), profile, CHAMPION)
    assert v.alarms == [] and v.estimate_trusted and v.weights == "the champion's importance", v.alarms


def test_one_important_input_far_beyond_threshold_alarms_alone_and_holds_retraining(reference):
    profile, window = reference
    moved = with_scores(window.assign(age=17 + (window["age"] - 17) // 4))  # a unit or mapping changed upstream, inside the range
    v = check(moved, moved.head(0), profile, CHAMPION)
    severe = next((a for a in v.alarms if a.kind == "input_drift"), None)
    assert severe is not None, v.alarms
    assert v.drift_share == pytest.approx(1 / 12)                         # the old count (2 of 12) stayed silent on this
    assert severe.inputs == ["age"] and "age" in severe.message and severe.holds_retraining
    assert not v.retrain                                                  # a defect upstream is fixed at its source, not learnt
    assert not v.estimate_trusted and "age" in v.estimate_caveat


def test_three_unimportant_inputs_slightly_drifted_raise_no_alarm(reference):
    profile, window = reference
    rng = np.random.default_rng(2)
    nudged = window.copy()
    for c in ["race", "sex", "native_country"]:
        nudged[c] = np.where(rng.random(len(nudged)) < 0.2, "d", nudged[c])
    v = check(nudged, nudged.head(0), profile, CHAMPION)
    drift = {d["feature"]: d for d in v.drift}
    assert all(drift[c]["drifted"] and drift[c]["psi"] < drift[c]["severe_psi"] for c in ["race", "sex", "native_country"]), drift
    assert v.alarms == [], v.alarms                                       # 3 of 12 inputs, but 3% of the model's weight


def test_the_same_three_inputs_alarm_with_equal_weights_from_an_old_run(reference):
    profile, window = reference
    old = {k: v for k, v in profile.items() if k != "importance"}          # a run from before importance was stored
    rng = np.random.default_rng(2)
    nudged = window.copy()
    for c in ["race", "sex", "native_country"]:
        nudged[c] = np.where(rng.random(len(nudged)) < 0.2, "d", nudged[c])
    v = check(nudged, nudged.head(0), old, CHAMPION)
    assert kinds(v) == ["drift"] and v.weights.startswith("equal weights"), v.alarms


def test_scores_that_moved_raise_a_score_drift_alarm_of_their_own(reference):
    profile, window = reference
    shifted = window.assign(probability=np.clip(window["probability"] + 0.25, 0, 1))    # same inputs, other scores
    v = check(shifted, shifted.head(0), profile, CHAMPION)
    assert "score_drift" in kinds(v) and "positive_share" in kinds(v), v.alarms
    assert not {"drift", "input_drift"} & set(kinds(v))
    assert v.score_psi > v.score_psi_threshold


def test_the_monitoring_page_names_the_rule_draws_each_inputs_drift_and_marks_the_important_ones(reference, tmp_path):
    "Two real checks recorded as monitoring jobs, summarised as the API does, drawn by the page's own functions."
    from streamlit.testing.v1 import AppTest

    from incomeops.jobs import JobRunner
    from incomeops.store import Store
    from incomeops.summary import summarise_predictions
    profile, window = reference
    calm = check(window, window.head(0), profile, CHAMPION)
    moved = with_scores(window.assign(age=17 + (window["age"] - 17) // 4))
    broken = check(moved, moved.head(0), profile, CHAMPION)
    store, settings = Store(f"sqlite:///{tmp_path}/service.db"), Settings(root=tmp_path)
    runner = JobRunner(store, settings)
    for verdict in (calm, broken):
        runner.wait(runner.submit("monitor", {}, lambda *_, v=verdict: {**v.as_dict(), "retraining": {"started": False, "why": "held"}})["id"], 10)
    summary = summarise_predictions(store, None, settings)
    store.close()
    assert summary["important_inputs"] == ["age", "education_num", "hours_per_week"]
    assert [c["rules"] for c in summary["checks"]][0] == [] and {"kind": "input_drift", "inputs": ["age"]} in summary["checks"][1]["rules"]

    def app(summary: dict):
        import sys
        sys.path.insert(0, summary.pop("repo"))
        from pages.monitoring import show_check, show_history
        show_check(summary["last_check"], summary["important_inputs"])
        show_history(summary)

    at = AppTest.from_function(app, args=({**summary, "repo": str(REPO)},), default_timeout=60).run()
    assert not at.exception, at.exception
    assert any("(rule: input_drift on age)" in e.value for e in at.error), [e.value for e in at.error]
    inputs = at.multiselect(key="drift_inputs")
    assert set(inputs.value) >= {"age", "education_num", "hours_per_week"}        # the important ones, and every one that drifted
    assert "★ age" == inputs.format_func("age") and inputs.format_func("race") == "race"
    table = at.dataframe[0].value
    assert table["rules that fired"].tolist()[0].startswith("input_drift on age") and table["rules that fired"].tolist()[1] == "none"
    assert any(c.value.startswith("Not trusted: an input drifted") for c in at.caption)
