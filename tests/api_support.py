"""Real components for the service tests: a project with a registered champion, and the API under uvicorn on loopback."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import mlflow
import pandas as pd

from conftest import REPO, free_port
from incomeops.cleaning import build_dataset
from incomeops.config import Settings
from incomeops.features import model_inputs, target
from incomeops.monitoring import log_reference
from incomeops.registry import GateDecision, apply_decision, register_challenger
from incomeops.training import log_model, make_model, use_tracking

UVICORN = str(Path(sys.executable).with_name("uvicorn"))
ADMIN_KEY = "test-admin-key"


def project_settings(root: Path, mirror: Path) -> Settings:
    "Settings of a throwaway project at `root` that reads the data from `mirror`."
    return Settings(root=root, notebooks_dir=REPO / "nbs", data_mirror=mirror)


def clean_frames(settings: Settings) -> tuple[pd.DataFrame, pd.DataFrame, str]:
    "The clean training and test rows of the project's dataset, and its version."
    snapshot = build_dataset(settings)
    df = pd.read_parquet(snapshot.data_file)
    return df[df["split"] == "train"], df[df["split"] == "test"], snapshot.version


def register_model(settings: Settings, family: str, params: dict, threshold: float, promote: bool = True):
    "Fit `family` on the training rows, log it in a run, register it and (if `promote`) make it champion."
    train, test, version = clean_frames(settings)
    model = make_model(family, params).fit(model_inputs(train), target(train))
    use_tracking(settings)
    X = model_inputs(train)
    with mlflow.start_run() as run:
        mlflow.log_metrics({"test_roc_auc": 0.9, "test_accuracy": 0.85})
        info = log_model(model, X.head(5))
        log_reference(X, model.predict_proba(X)[:, 1], {"family": family, "params": params, "train_query": None, "eval_query": None,
                                                        "evidence": "test", "threshold": threshold,
                                                        "test": {"roc_auc": 0.9, "accuracy": 0.85}})
    mv = register_challenger(info.model_uri, run.info.run_id, {"threshold": f"{threshold:.6f}", "dataset_version": version,
                                                               "family": family}, settings)
    if promote: apply_decision(GateDecision(True, ["registered by the test suite"]), mv, settings)
    return mv, model


def new_champion_project(root: Path, mirror: Path):
    "A throwaway project at `root` whose registry has a LightGBM champion (version 1, threshold 0.45); (settings, pipeline)."
    settings = project_settings(root, mirror)
    _, model = register_model(settings, "lightgbm", {"n_estimators": 60}, threshold=0.45)
    return settings, model


@dataclass
class ApiServer:
    "The API as users run it: uvicorn in a child process on a free loopback port."
    settings: Settings
    env: dict = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str: return f"http://127.0.0.1:{self.port}"

    @property
    def log_file(self) -> Path: return self.settings.root / f"api-{self.port}.log"

    def start(self, ready_timeout: float = 120) -> ApiServer:
        env = {**os.environ, **self.settings.as_env(), "MLFLOW_DISABLE_TELEMETRY": "true", "OMP_NUM_THREADS": "1", **self.env}
        self.proc = subprocess.Popen([UVICORN, "app.main:app", "--host", "127.0.0.1", "--port", str(self.port), "--no-access-log"],
                                     cwd=REPO, env=env, stdout=open(self.log_file, "wb"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + ready_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None: raise RuntimeError(f"the API exited ({self.proc.returncode}):\n{self.output()}")
            try:
                if httpx.get(f"{self.url}/ready", timeout=2).status_code == 200: return self
            except httpx.TransportError: pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"the API was not ready within {ready_timeout} s:\n{self.output()}")

    def stop(self, timeout: float = 30) -> int | None:
        "Stop as an operator would (SIGTERM: uvicorn drains and runs the shutdown); the exit status."
        if self.proc is None or self.proc.poll() is not None: return self.proc and self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try: return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def output(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""
