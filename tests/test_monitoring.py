"""Monitoring and retraining end to end, with real components only: Papermill training into an MLflow SQLite registry,
the API under uvicorn in its own process (`incomeops.harness.api_server`), and replays of the held-out census through it.

The retraining tests share one covariate-shift workspace (module-scoped) and run in file order: the drift alarm on the first
500 rows, a retraining that crashes, one that promotes, one that must be refused."""
from __future__ import annotations

import shutil
from pathlib import Path

import nbformat
import pytest

from conftest import REPO
from incomeops.cleaning import TARGET, build_dataset
from incomeops.client import ApiClient
from incomeops.config import Settings
from incomeops.harness import api_server
from incomeops.monitoring import split_test_file
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


def test_covariate_shift_raises_drift_alarm_within_500_rows(covariate_shift):
    w = covariate_shift
    timeline, log = replay(w["client"], w["stream"].head(500), w["scenario"], batch_rows=500, label_delay=1)
    w["replayed"] = 500
    first = timeline.iloc[0]
    assert first["rows_served"] == 500
    assert "drift" in first["alarms"].split(","), f"no drift alarm on the first 500 rows: {first.to_dict()}"
    assert set(log["version"].astype(str)) == {w["first_version"]}


def test_crash_mid_retrain_leaves_champion_serving(covariate_shift):
    w, client = covariate_shift, covariate_shift["client"]
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


def test_retrain_promotes_a_better_model_and_serves_it_without_restart(covariate_shift):
    w, client = covariate_shift, covariate_shift["client"]
    start = w["replayed"]
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


def test_retrain_refuses_a_worse_model(covariate_shift):
    w, client = covariate_shift, covariate_shift["client"]
    start = w["replayed"]
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
