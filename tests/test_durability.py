"""What survives a hard stop: every prediction answered 200 reaches the service database even if the server is SIGKILLed
right after (it was in the prediction log's journal; the next start replays what the dead process had not drained, and
drops a record the kill tore); a cancelled, timed-out or orphaned training job leaves no notebook process behind and never
registers or promotes a model, and the API keeps predicting.

Each test starts its own API (uvicorn on loopback) on one throwaway project with a real MLflow registry, so a kill
here never touches the session's shared server.
"""
import sqlite3
import threading
import time
from collections import Counter
from contextlib import closing
from pathlib import Path

import httpx
import pytest

from api_support import (
    ADMIN_KEY,
    ApiServer,
    cmdline_of,
    descendants,
    kill_processes,
    kill_server,
    new_champion_project,
    notebook_processes,
    registry_state,
    wait_for_job,
    wait_until,
)
from incomeops.schema import EXAMPLE_PERSON
from incomeops.store import _HEADER, JOURNAL_MAGIC, JOURNAL_SUFFIX, Store, journal_folder

pytestmark = pytest.mark.timeout(420)

ADMIN = {"X-API-Key": ADMIN_KEY}
QUICK_JOB = {"candidates": "logreg", "model_family": "logreg", "n_trials": 0, "cv_folds": 2}
LEASE_SECONDS = 5


@pytest.fixture(scope="module")
def project(tmp_path_factory, mirror):
    "A throwaway project with a LightGBM champion (version 1) of its own."
    return new_champion_project(tmp_path_factory.mktemp("durable"), mirror)[0]


@pytest.fixture
def servers():
    "Start APIs with `servers(settings, env)`; each is stopped (or already dead) at the end."
    started = []
    def start(settings, **env):
        server = ApiServer(settings, env={"INCOMEOPS_API_KEY": ADMIN_KEY, **env}).start()
        started.append(server)
        return server
    yield start
    for server in started: server.stop()


def logged_ids(settings) -> set[str]:
    store = Store(settings.service_database_url)
    try: return set(store.predictions()["prediction_id"])
    finally: store.close()


def predicts(server: ApiServer) -> bool:
    response = httpx.post(f"{server.url}/predict", json=EXAMPLE_PERSON, timeout=30)
    return response.status_code == 200 and len(response.json()["prediction_id"]) == 32


# --------------------------------------------------------------------------------------------- acknowledged predictions
def tear_last_record(journal_file: Path) -> int:
    "Append the start of a record that a kill interrupted (a header announcing more than follows); its size in bytes."
    torn = _HEADER.pack(JOURNAL_MAGIC, 64 * 1024, 0) + b"\x00" * 1000
    with journal_file.open("ab") as f: f.write(torn)
    return len(torn)


def test_no_prediction_answered_200_is_lost_when_the_server_is_sigkilled(project, servers):
    server = servers(project)
    answered, statuses, stop = [], Counter(), threading.Event()

    def stream(k: int):
        with httpx.Client(base_url=server.url, timeout=10) as client:
            for i in range(20_000):                       # bounded in count; the kill ends it after ~4 s
                if stop.is_set(): return
                body = [{**EXAMPLE_PERSON, "age": 17 + (k * 7 + i + j) % 74} for j in range(50)] if k == 0 else {**EXAMPLE_PERSON, "age": 17 + (k * 7 + i) % 74}
                try: response = client.post("/predict", json=body)
                except httpx.HTTPError:
                    statuses["no answer"] += 1
                    return                                # the server is gone
                statuses[response.status_code] += 1
                if response.status_code == 200:
                    got = response.json()
                    answered.extend(a["prediction_id"] for a in (got if isinstance(got, list) else [got]))

    threads = [threading.Thread(target=stream, args=(k,), daemon=True) for k in range(4)]
    for t in threads: t.start()
    time.sleep(2)                                         # streaming at full speed: one client sends batches of 50
    with closing(sqlite3.connect(project.data_dir / "service.db", isolation_level=None)) as blocker:
        blocker.execute("BEGIN IMMEDIATE")                # the database stalls: the drain waits, the journal acknowledges
        time.sleep(2)
        status = kill_server(server)                      # mid-stream: requests are in flight
        stop.set()
        blocker.execute("ROLLBACK")
    for t in threads: t.join(30)
    assert not any(t.is_alive() for t in threads)
    acknowledged = set(answered)
    in_database_at_kill = logged_ids(project) & acknowledged
    folder = journal_folder(project.service_database_url, project)
    left = sorted(folder.glob(f"*{JOURNAL_SUFFIX}"))
    assert left, f"the killed server left no journal file in {folder}"
    torn = tear_last_record(left[-1])                     # as if the kill had stopped a write halfway

    restarted = servers(project)                          # replays the dead server's journal, then serves
    def all_stored():
        return not (acknowledged - logged_ids(project))
    try: wait_until(all_stored, 60, 0.5, "every acknowledged prediction reaching the database after the restart")
    except AssertionError: pass                           # reported below with the figures
    logged = logged_ids(project)
    lost = acknowledged - logged
    figures = (f"SIGKILL (exit {status}) after 4 s of 4 streaming clients, the last 2 s with the database locked: {len(acknowledged)} answered 200, {len(in_database_at_kill)} "
               f"of them in the database at the kill, {len(acknowledged - in_database_at_kill)} in the journal only; after the restart "
               f"{len(logged & acknowledged)} in the database, {len(lost)} acknowledged but lost; {len(logged)} rows logged in all; "
               f"journal files left by the kill {len(left)} (a torn record of {torn} bytes appended); answers {dict(statuses)}")
    print("\n" + figures)
    assert len(acknowledged) == len(answered), "an id was answered twice"
    assert len(acknowledged) >= 100, f"too few predictions to judge: {figures}"
    assert acknowledged - in_database_at_kill, f"every acknowledged prediction was in the database already: the replay is untested; {figures}"
    assert not lost, f"{figures}; e.g. {sorted(lost)[:5]}"
    assert not any(p.exists() for p in left), f"the dead server's journal files were not removed after the replay: {figures}"
    assert "torn" in restarted.output(), f"the restart did not report the torn record: {restarted.output()[-3000:]}"
    assert predicts(restarted)


# --------------------------------------------------------------------------------------------- jobs
def notebook_of(server: ApiServer) -> list:
    "The API's descendant processes that belong to a job's notebook (papermill and its kernel)."
    return [p for p in descendants(server.proc.pid) if any(w in cmdline_of(p) for w in ("papermill", "ipykernel"))]


def start_running_job(server: ApiServer, http: httpx.Client, wait_for_kernel: bool = True) -> tuple[str, list]:
    "Start a small training job and wait until it runs its notebook; (job id, the notebook's processes seen)."
    started = http.post("/jobs/train", json=QUICK_JOB, headers=ADMIN)
    assert started.status_code == 202, started.text
    job_id, seen = started.json()["id"], {}

    def running_with(words: str):
        for p in notebook_of(server) + notebook_processes(server.settings): seen.setdefault(p.pid, p)
        status = http.get(f"/jobs/{job_id}", headers=ADMIN).json()["status"]
        assert status in ("queued", "running"), f"job {job_id} ended ({status}) before the test could interrupt it"
        return status == "running" and any(words in cmdline_of(p) for p in seen.values())

    wait_until(lambda: running_with("papermill"), 60, 0.2, "the job's notebook starting (a papermill process)")
    if wait_for_kernel:
        try: wait_until(lambda: running_with("ipykernel"), 45, 0.2, "the notebook's kernel starting")
        except AssertionError: pass                        # a runner without a separate kernel process: papermill is enough
        time.sleep(1)
    return job_id, list(seen.values())


def lingering(settings, seen: list, timeout: float) -> list[str]:
    "The notebook processes still alive after waiting up to `timeout` seconds for them to go (empty: all gone)."
    deadline = time.monotonic() + timeout
    while (alive := notebook_processes(settings, seen)) and time.monotonic() < deadline: time.sleep(0.25)
    return [f"{p.pid} {cmdline_of(p)[:160]}" for p in alive if p.is_running()]


def test_cancelling_a_running_job_kills_its_notebook_and_registers_nothing(project, servers):
    server = servers(project)
    before = registry_state(project)
    seen = []
    with httpx.Client(base_url=server.url, timeout=30) as http:
        try:
            job_id, seen = start_running_job(server, http)
            cancel = http.post(f"/jobs/{job_id}/cancel", headers=ADMIN)
            assert cancel.status_code in (200, 202), f"cancel answered {cancel.status_code}: {cancel.text[:500]}"
            job = wait_for_job(http, job_id, ADMIN, timeout=60)
            left = lingering(project, seen, 30)
            problems = []
            if job["status"] != "cancelled": problems.append(f"the job ended {job['status']!r}, not 'cancelled': {job.get('error')}")
            if left: problems.append(f"notebook processes still running 30 s after the cancel: {left}")
            if (after := registry_state(project)) != before: problems.append(f"the registry changed: {before} -> {after}")
            again = http.post(f"/jobs/{job_id}/cancel", headers=ADMIN)
            if again.status_code != 409: problems.append(f"cancelling the finished job answered {again.status_code}, not 409")
            unknown = http.post("/jobs/000000000000/cancel", headers=ADMIN)
            if unknown.status_code != 404: problems.append(f"cancelling an unknown job answered {unknown.status_code}, not 404")
            if not predicts(server): problems.append("the API no longer predicts")
            assert not problems, "; ".join(problems)
        finally: kill_processes(notebook_processes(project, seen))


def test_a_job_over_its_time_limit_fails_naming_the_limit_and_leaves_nothing_behind(project, servers):
    server = servers(project, INCOMEOPS_JOB_TIMEOUT_MINUTES="0.05")          # 3 s
    before = registry_state(project)
    seen = {}
    with httpx.Client(base_url=server.url, timeout=30) as http:
        try:
            started = http.post("/jobs/train", json=QUICK_JOB, headers=ADMIN)
            assert started.status_code == 202, started.text
            job_id = started.json()["id"]

            def finished():
                for p in notebook_of(server) + notebook_processes(project): seen.setdefault(p.pid, p)
                job = http.get(f"/jobs/{job_id}", headers=ADMIN).json()
                return job if job["status"] not in ("queued", "running") else None
            job = wait_until(finished, 120, 0.2, f"job {job_id} ending after its 3 s limit")
            left = lingering(project, list(seen.values()), 30)
            problems = []
            error = job.get("error") or ""
            if job["status"] != "failed": problems.append(f"the job ended {job['status']!r}, not 'failed'")
            if not any(w in error.lower() for w in ("time limit", "timed out", "timeout")):
                problems.append(f"the error does not name the time limit: {error[:300]!r}")
            if left: problems.append(f"notebook processes still running 30 s after the limit: {left}")
            if (after := registry_state(project)) != before: problems.append(f"the registry changed: {before} -> {after}")
            if not predicts(server): problems.append("the API no longer predicts")
            print(f"\ntimed-out job: {job['status']} after {job.get('seconds')} s: {error[:200]}; {len(seen)} notebook processes seen")
            assert not problems, "; ".join(problems)
        finally: kill_processes(notebook_processes(project, list(seen.values())))


def test_an_orphaned_job_never_registers_and_is_failed_after_the_restart(project, servers):
    env = {"INCOMEOPS_JOB_LEASE_SECONDS": str(LEASE_SECONDS)}
    server = servers(project, **env)
    before = registry_state(project)
    seen = []
    try:
        with httpx.Client(base_url=server.url, timeout=30) as http: job_id, seen = start_running_job(server, http)
        kill_server(server)                                                  # the API dies mid-run; its notebook is orphaned
        killed = time.monotonic()
        left = lingering(project, seen, 3 * LEASE_SECONDS + 30)
        gone_after = time.monotonic() - killed
        time.sleep(max(0.0, killed + 2 * LEASE_SECONDS - time.monotonic()))  # well past the lease
        registry_after_kill = registry_state(project)
        restarted = servers(project, **env)
        restarted_at = time.monotonic()
        with httpx.Client(base_url=restarted.url, timeout=30) as http:
            try: job = wait_for_job(http, job_id, ADMIN, statuses=("failed", "succeeded", "cancelled"), timeout=3 * LEASE_SECONDS + 30)
            except AssertionError as e: job = {"status": f"not finished: {e}"}
            problems = []
            if left: problems.append(f"notebook processes still running {3 * LEASE_SECONDS + 30} s after the API was killed: {left}")
            if registry_after_kill != before: problems.append(f"the orphaned job changed the registry: {before} -> {registry_after_kill}")
            if job["status"] != "failed": problems.append(f"after the restart the job is {job['status']!r}, not 'failed'")
            if (after := registry_state(project)) != before: problems.append(f"the registry changed: {before} -> {after}")
            if not predicts(restarted): problems.append("the restarted API does not predict")
            print(f"\norphaned job {job_id}: notebook processes gone {gone_after:.1f} s after the SIGKILL (left: {left}); "
                  f"{job['status']} {time.monotonic() - restarted_at:.1f} s after the restart ({job.get('error')}); registry {registry_state(project)}")
            assert not problems, "; ".join(problems)
    finally: kill_processes(notebook_processes(project, seen))
