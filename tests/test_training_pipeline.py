"""`incomeops train` from a clean state, as a user runs it: the Papermill pipeline, a real MLflow store and registry.

One throwaway project is shared by the tests of this module, in order: the first model becomes champion, a
deliberately worse one stays challenger, a failing run leaves the champion alone, and a rerun reproduces the metrics.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
from sklearn.metrics import roc_auc_score

from conftest import REPO
from incomeops.cleaning import load_snapshot
from incomeops.config import Settings
from incomeops.features import model_inputs, target

INCOMEOPS = str(Path(sys.executable).with_name("incomeops"))
QUICK = ["--candidates", "logreg,hgb,lightgbm", "--trials", "2", "--folds", "3"]
pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def project(tmp_path_factory, mirror):
    root = tmp_path_factory.mktemp("trained")
    env = {**os.environ, "INCOMEOPS_ROOT": str(root), "INCOMEOPS_NOTEBOOKS_DIR": str(REPO / "nbs"),
           "INCOMEOPS_DATA_MIRROR": str(mirror), "MLFLOW_DISABLE_TELEMETRY": "true"}
    return root, env


def train(project, *args: str) -> subprocess.CompletedProcess:
    root, env = project
    return subprocess.run([INCOMEOPS, "train", *args], env=env, capture_output=True, text=True, timeout=900)


def last_json(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def registry(project):
    root, _ = project
    mlflow.set_tracking_uri(Settings(root=root).mlflow_tracking_uri)
    mlflow.set_registry_uri(Settings(root=root).mlflow_tracking_uri)
    yield mlflow.MlflowClient()
    mlflow.set_tracking_uri(None)


@pytest.fixture(scope="module")
def first(project):
    res = train(project, *QUICK)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


def test_first_model_becomes_champion_with_a_complete_run(first, project, registry):
    root, _ = project
    out = last_json(first.stdout)
    assert out["decision"] == "promoted" and out["model_version"] == 1
    champion = registry.get_model_version_by_alias("incomeops", "champion")
    assert int(champion.version) == 1 and champion.run_id == out["run_id"]
    run = registry.get_run(out["run_id"])
    assert run.info.status == "FINISHED"
    assert {"data_version", "n_trials", "seed", "model.family"} <= set(run.data.params)
    assert {"test_roc_auc", "test_accuracy", "test_log_loss", "test_brier", "test_f1", "test_pr_auc", "cv_auc", "threshold"} <= set(run.data.metrics)
    assert len(run.data.tags["git_commit"]) == 40 and run.data.tags["gate.decision"] == "promoted"
    snapshot_version = (root / "data/processed/latest").read_text().strip()
    assert run.inputs.dataset_inputs[0].dataset.digest == snapshot_version
    artifacts = {a.path for a in registry.list_artifacts(out["run_id"], "evaluation")}
    assert {f"evaluation/{n}" for n in ("model_card.md", "roc.png", "precision_recall.png", "calibration.png",
                                         "confusion_matrix.png", "feature_importance.png", "slices.csv")} <= artifacts
    notebooks = [a.path for a in registry.list_artifacts(out["run_id"], "notebook")]
    assert any(p.endswith(".ipynb") for p in notebooks) and any(p.endswith(".html") for p in notebooks)
    assert (root / "reports/champion/model_card.md").is_file()
    assert list((root / "reports/runs").glob("*.ipynb"))
    assert float(champion.tags["threshold"]) == pytest.approx(run.data.metrics["threshold"])


def test_plain_pyfunc_load_reproduces_the_logged_test_auc(first, project, registry):
    root, _ = project
    run = registry.get_run(last_json(first.stdout)["run_id"])
    df = load_snapshot(settings=Settings(root=root)).load()
    test = df[df["split"] == "test"]
    model = mlflow.pyfunc.load_model("models:/incomeops@champion")
    proba = model.predict(model_inputs(test))[:, 1]
    assert roc_auc_score(target(test), proba) == pytest.approx(run.data.metrics["test_roc_auc"], abs=1e-12)


def test_a_worse_model_stays_challenger_and_the_reason_is_recorded(first, project, registry):
    res = train(project, "--family", "lightgbm", "--params", '{"n_estimators": 3, "num_leaves": 2}', "--trials", "0", "--folds", "3")
    assert res.returncode == 0, res.stderr[-3000:]
    out = last_json(res.stdout)
    assert out["decision"] == "rejected" and out["model_version"] == 2
    assert registry.get_model_version_by_alias("incomeops", "champion").version == 1
    assert registry.get_model_version_by_alias("incomeops", "challenger").version == 2
    tags = registry.get_run(out["run_id"]).data.tags
    assert tags["gate.decision"] == "rejected" and "AUC" in tags["gate.reasons"]
    assert "model version 2: rejected" in res.stdout and "  - AUC " in res.stdout


def test_a_failing_run_is_marked_failed_and_the_champion_keeps_serving(first, project, registry):
    res = train(project, "--data-version", "000000000000", *QUICK)
    assert res.returncode == 1
    assert "error: train.ipynb failed: IncomeOpsError: dataset version '000000000000' not found" in res.stderr
    assert "Traceback" not in res.stderr
    failed = mlflow.search_runs(experiment_names=["incomeops"], filter_string="attributes.status = 'FAILED'", output_format="list")
    assert len(failed) == 1
    assert any(a.path.endswith(".ipynb") for a in registry.list_artifacts(failed[0].info.run_id, "notebook"))
    assert registry.get_model_version_by_alias("incomeops", "champion").version == 1


def test_same_data_parameters_and_seed_reproduce_the_metrics(first, project, registry):
    res = train(project, *QUICK, "--no-register")
    assert res.returncode == 0, res.stderr[-3000:]
    a = registry.get_run(last_json(first.stdout)["run_id"]).data.metrics
    b = registry.get_run(last_json(res.stdout)["run_id"]).data.metrics
    for k in ("cv_auc", "threshold", "test_roc_auc", "test_accuracy", "test_log_loss"):
        assert a[k] == b[k], k
