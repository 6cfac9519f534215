"""Real components for the service tests: a project with a registered champion, and the API under uvicorn on loopback."""
from __future__ import annotations

import json as _json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import pandas as pd
import psutil

from conftest import REPO
from incomeops import harness
from incomeops.cleaning import build_dataset
from incomeops.config import Settings
from incomeops.features import model_inputs, target
from incomeops.harness import api_server, free_port
from incomeops.monitoring import log_reference
from incomeops.registry import GateDecision, apply_decision, register_challenger
from incomeops.training import log_model, make_model, use_tracking

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
    """The API as users run it (`incomeops.harness.api_server`: uvicorn in a child process on a free loopback port), one
    thread for the numeric libraries, with `env` on top of the settings; `start()` returns it ready, or fails showing its log."""
    settings: Settings
    env: dict = field(default_factory=dict)

    def __post_init__(self): self.server = api_server(self.settings, env={"OMP_NUM_THREADS": "1", **self.env})

    url = property(lambda self: self.server.url)
    port = property(lambda self: self.server.port)
    proc = property(lambda self: self.server.proc)

    def start(self, ready_timeout: float | None = None) -> ApiServer:
        self.server.start().wait_ready(timeout=ready_timeout)
        return self

    def stop(self, timeout: float = 30) -> int | None:
        "Stop as an operator would (SIGTERM: uvicorn drains and runs the shutdown), then SIGKILL what is left; the exit status."
        return self.server.stop(timeout)

    def output(self) -> str:
        return self.server.log_file.read_text(errors="replace") if self.server.log_file.exists() else ""

    def __enter__(self) -> ApiServer: return self.start()
    def __exit__(self, *exc) -> None: self.stop()


# ----------------------------------------------------------------------------------------------- hostile, durability and outage tests
PG_BIN = Path("/usr/lib/postgresql/15/bin")
ERROR_KEYS = {"detail", "errors", "errors_omitted"}


def wait_until(predicate, timeout: float, interval: float = 0.2, what: str = "the condition"):
    "`incomeops.harness.wait_until` in the tests' argument order; running out of time fails the test (AssertionError)."
    try: return harness.wait_until(predicate, timeout, what, interval)
    except harness.TimedOut as e: raise AssertionError(str(e)) from None


def kill_server(server: ApiServer) -> int:
    "SIGKILL the API process (no shutdown, no drain), as the kernel's OOM killer or a node failure would; its exit status."
    server.proc.send_signal(signal.SIGKILL)
    return server.proc.wait(30)


def assert_error_body(response, status: int | None = None) -> dict:
    "The JSON error body of a 4xx/5xx answer, checked against the error contract: detail, at most 20 errors, errors_omitted."
    if status is not None: assert response.status_code == status, (response.status_code, response.text[:2000])
    assert response.headers.get("content-type", "").startswith("application/json"), response.headers.get("content-type")
    body = response.json()
    assert isinstance(body, dict) and set(body) == ERROR_KEYS, body
    assert isinstance(body["detail"], str) and body["detail"].strip(), body
    assert isinstance(body["errors"], list) and len(body["errors"]) <= 20, len(body["errors"])
    assert all(isinstance(e, dict) and set(e) == {"field", "problem"} and isinstance(e["field"], str) and isinstance(e["problem"], str)
               for e in body["errors"]), body["errors"][:3]
    assert isinstance(body["errors_omitted"], int) and not isinstance(body["errors_omitted"], bool) and body["errors_omitted"] >= 0, body
    return body


def job_ids(http, admin: dict) -> set[str]:
    "Ids of the newest 500 jobs the service knows."
    response = http.get("/jobs", headers=admin, params={"limit": 500})
    assert response.status_code == 200, response.text
    return {j["id"] for j in response.json()}


def wait_for_job(http, job_id: str, admin: dict, statuses=("succeeded", "failed", "cancelled"), timeout: float = 300) -> dict:
    "The job's record once its status is one of `statuses` (AssertionError naming the last status seen after `timeout` s)."
    def reached():
        job = http.get(f"/jobs/{job_id}", headers=admin).json()
        if job.get("status") not in statuses: raise harness.NotYet(f"last seen: {job}")
        return job
    return wait_until(reached, timeout, 0.5, f"job {job_id} reaching {statuses}")


def registry_state(settings: Settings) -> dict:
    "What a job must not change behind our back: the registered versions and the aliases (champion, challenger)."
    from mlflow.exceptions import MlflowException

    from incomeops.training import mlflow_client
    client = mlflow_client(settings)
    try: model = client.get_registered_model(settings.model_name)
    except MlflowException: return {"versions": [], "aliases": {}}
    versions = sorted(int(v.version) for v in client.search_model_versions(f"name='{settings.model_name}'"))
    return {"versions": versions, "aliases": dict(sorted((model.aliases or {}).items()))}


def _matches_project(proc: psutil.Process, root: str) -> bool:
    cmdline = " ".join(proc.cmdline())
    if "papermill" not in cmdline and "ipykernel" not in cmdline: return False
    if root in cmdline: return True
    try: return proc.environ().get("INCOMEOPS_ROOT") == root
    except (psutil.AccessDenied, psutil.ZombieProcess): return False


def notebook_processes(settings: Settings, also: list[psutil.Process] = ()) -> list[psutil.Process]:
    """The live (not zombie) processes of a job notebook of this project: papermill and its kernels, found by their command
    line (papermill, ipykernel) and their project (the executed notebook's path on the command line, or INCOMEOPS_ROOT in
    their environment); plus those of `also` (seen earlier as the API's descendants) still alive."""
    root, found = str(settings.root), {}
    for proc in psutil.process_iter():
        try:
            if proc.status() != psutil.STATUS_ZOMBIE and _matches_project(proc, root): found[proc.pid] = proc
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess): pass
    for proc in also:
        try:
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE: found.setdefault(proc.pid, proc)
        except (psutil.NoSuchProcess, psutil.ZombieProcess): pass
    return list(found.values())


def cmdline_of(proc: psutil.Process) -> str:
    "The process's command line as one string ('' if it has gone)."
    try: return " ".join(proc.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess): return ""


def descendants(pid: int) -> list[psutil.Process]:
    "The live descendants of process `pid` (e.g. the notebook processes an API started)."
    try: children = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess: return []
    alive = []
    for p in children:
        try:
            if p.status() != psutil.STATUS_ZOMBIE: alive.append(p)
        except (psutil.NoSuchProcess, psutil.ZombieProcess): pass
    return alive


def kill_processes(procs) -> None:
    "Clean-up after a failing test: SIGKILL each of these processes (ours: started by the API the test started), by pid."
    for p in procs:
        try: p.kill()
        except psutil.NoSuchProcess: pass
    psutil.wait_procs(list(procs), timeout=10)


def raw_exchange(port: int, head: bytes, body_chunks=(), chunk_timeout: float = 10, total_timeout: float = 60) -> tuple[bytes, int]:
    """Send an HTTP request by hand on a socket (`head`, then `body_chunks` until the server answers), the way a hostile client
    would: (the server's answer as far as it came, body bytes sent before it answered)."""
    sent, answer = 0, b""
    deadline = time.monotonic() + total_timeout
    with socket.create_connection(("127.0.0.1", port), timeout=chunk_timeout) as sock:
        sock.sendall(head)
        try:
            for chunk in body_chunks:
                if time.monotonic() > deadline or select.select([sock], [], [], 0)[0]: break     # the server has answered
                _, writable, _ = select.select([], [sock], [], chunk_timeout)
                if not writable: break                                                        # it stopped reading
                sock.sendall(chunk)
                sent += len(chunk)
        except (TimeoutError, BrokenPipeError, ConnectionResetError): pass
        sock.settimeout(max(1.0, min(chunk_timeout, deadline - time.monotonic())))
        try:
            while b"\r\n\r\n" not in answer or len(answer) < _answer_length(answer):
                data = sock.recv(65536)
                if not data: break
                answer += data
        except (TimeoutError, ConnectionResetError): pass
    return answer, sent


def _answer_length(answer: bytes) -> int:
    head, _, _ = answer.partition(b"\r\n\r\n")
    m = re.search(rb"(?im)^content-length:\s*(\d+)", head)
    return len(head) + 4 + int(m.group(1)) if m else 1 << 62


def answer_status(answer: bytes) -> int | None:
    "The status code of a raw HTTP answer (None if there was none)."
    m = re.match(rb"HTTP/1\.[01] (\d{3})", answer)
    return int(m.group(1)) if m else None


def answer_json(answer: bytes):
    return _json.loads(answer.partition(b"\r\n\r\n")[2] or b"null")


class PostgresCluster:
    """A throwaway PostgreSQL 15 cluster (Debian's binaries) on a free loopback port with its unix socket in its own folder, run
    as the `postgres` user when we are root; trust authentication for the `postgres` role. Start, stop (immediately: a crash)
    and start again."""
    def __init__(self, port: int | None = None):
        self.port = port or free_port()
        self.folder = Path(tempfile.mkdtemp(prefix="incomeops-pg-"))
        self.data = self.folder / "data"
        self.as_root = os.geteuid() == 0                  # PostgreSQL refuses to run as root: then it runs as `postgres`
        if self.as_root: shutil.chown(self.folder, "postgres", "postgres")

    @staticmethod
    def available() -> bool:
        binaries = all((PG_BIN / b).is_file() for b in ("initdb", "pg_ctl", "postgres"))
        return binaries and (os.geteuid() != 0 or shutil.which("runuser") is not None)

    def _command(self, *args: str) -> list[str]:
        return ["runuser", "-u", "postgres", "--", *args] if self.as_root else list(args)

    @property
    def url(self) -> str: return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _as_postgres(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        result = subprocess.run(self._command(*args), cwd=self.folder, capture_output=True, text=True, timeout=timeout)
        if result.returncode: raise RuntimeError(f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}\n{self.log()}")
        return result

    def init(self) -> PostgresCluster:
        self._as_postgres(str(PG_BIN / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
        return self.start()

    def start(self) -> PostgresCluster:
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-o", options, "-l", str(self.folder / "server.log"), "-w", "-t", "60", "start")
        return self

    def stop(self, mode: str = "immediate") -> None:
        self._as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")

    def running(self) -> bool:
        return subprocess.run(self._command(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "status"),
                              capture_output=True, timeout=30).returncode == 0

    def log(self) -> str:
        f = self.folder / "server.log"
        return f.read_text(errors="replace")[-4000:] if f.exists() else ""

    def destroy(self) -> None:
        try:
            if self.data.exists() and self.running(): self.stop("fast")
        finally: shutil.rmtree(self.folder, ignore_errors=True)
