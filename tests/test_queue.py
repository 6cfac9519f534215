"""Jobs on Celery with Redis, on real parts: a redis-server, a Celery worker process (`incomeops worker`), two API replicas
(uvicorn) with INCOMEOPS_BROKER_URL, and beat (`incomeops beat`) where the schedule is tested, all on loopback against one
service database and one MLflow registry (SQLite files of one throwaway project).

What it shows: a job enqueued through either replica runs once, on the worker; two training requests at the same moment
on the two replicas get one 202 and one 409 naming the other job; after a promotion on the worker both replicas serve the
new version within `model_poll_seconds` (plus the load); cancelling kills the notebook on the worker; a worker SIGKILLed
mid-training has its job failed within the lease, its notebook gone, the champion unchanged, and the next job runs (one
stopped with SIGTERM records it as interrupted); with Redis down, job requests answer 503 while predictions go on; beat
runs the scheduled check once per interval, and the replicas none; on PostgreSQL too, one of two simultaneous claims
wins. Skipped only when redis-server is not installed (`make system-deps` installs it).
"""
from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import httpx
import psutil
import pytest
import redis

from api_support import (
    ADMIN_KEY,
    ApiServer,
    cmdline_of,
    descendants,
    kill_processes,
    new_champion_project,
    notebook_processes,
    registry_state,
    wait_for_job,
    wait_until,
)
from incomeops.harness import BIN, Server, free_port
from incomeops.jobs import LOST
from incomeops.queue import BROKER_DOWN, WORKER_STOPPED
from incomeops.schema import EXAMPLE_PERSON

pytestmark = [pytest.mark.timeout(600),
              pytest.mark.skipif(shutil.which("redis-server") is None,
                                 reason="redis-server is not installed (`make system-deps` installs it)")]

ADMIN = {"X-API-Key": ADMIN_KEY}
LEASE_SECONDS = 5             # short, so that a killed worker's job is failed quickly
POLL_SECONDS = 2              # each replica asks the registry for the champion this often
INTERVAL_MINUTES = 0.2        # beat's monitoring check every 12 s (the replicas are given it too: they must not run it)
QUICK_TRAIN = {"candidates": "logreg", "model_family": "logreg", "n_trials": 0, "cv_folds": 2}
PROMOTING_TRAIN = {"candidates": "lightgbm", "model_family": "lightgbm", "n_trials": 0, "cv_folds": 2}   # beats the 60-tree champion


def process_env(settings, extra: dict) -> dict[str, str]:
    "The environment of a worker or beat process: this one's without INCOMEOPS_*, then the project's settings, then `extra`."
    base = {k: v for k, v in os.environ.items() if not k.startswith("INCOMEOPS_")}
    return {**base, **settings.as_env(), "MLFLOW_DISABLE_TELEMETRY": "true", "OMP_NUM_THREADS": "1", **extra}


@dataclass
class Stack:
    "Redis, a Celery worker and two API replicas sharing one project (database and registry); beat only when a test starts it."
    settings: object
    root: Path
    env: dict                                    # the queue settings every process of the stack gets
    redis_port: int = field(default_factory=free_port)
    redis: Server | None = None
    worker: Server | None = None
    apis: list[ApiServer] = field(default_factory=list)
    started: int = 0

    @property
    def broker(self) -> str: return f"redis://127.0.0.1:{self.redis_port}/0"

    def start_redis(self) -> Server:
        self.redis = Server("redis-server", ["redis-server", "--port", str(self.redis_port), "--bind", "127.0.0.1", "--save", "",
                                             "--appendonly", "no"], f"http://127.0.0.1:{self.redis_port}", self.root / f"redis-{self.next()}.log",
                            ready_path=None).start()
        def pong() -> bool:
            self.redis.check_running()
            try: return redis.Redis(port=self.redis_port, socket_timeout=2).ping()
            except redis.ConnectionError: return False
        wait_until(pong, 30, 0.1, "redis-server answering PING")
        return self.redis

    def next(self) -> int:
        self.started += 1
        return self.started

    def start_worker(self) -> Server:
        "A Celery worker (`incomeops worker`), ready once Celery says so."
        self.worker = Server("the Celery worker", [BIN / "incomeops", "worker"], "http://127.0.0.1:9", self.root / f"worker-{self.next()}.log",
                             env=process_env(self.settings, self.env), cwd=self.root, ready_path=None).start()
        def ready():
            self.worker.check_running()
            return " ready." in self.worker.log_file.read_text(errors="replace")
        wait_until(ready, 120, 0.2, "the Celery worker saying it is ready")
        return self.worker

    def start_beat(self) -> Server:
        return Server("Celery beat", [BIN / "incomeops", "beat"], "http://127.0.0.1:9", self.root / f"beat-{self.next()}.log",
                      env=process_env(self.settings, self.env), cwd=self.root, ready_path=None).start()

    def api(self, **env) -> ApiServer:
        "An API replica of this project with the queue settings (not started yet)."
        return ApiServer(self.settings, env={"INCOMEOPS_API_KEY": ADMIN_KEY, **self.env, **env})

    def http(self, i: int) -> httpx.Client:
        return httpx.Client(base_url=self.apis[i].url, timeout=30)

    def job(self, job_id: str, i: int = 0) -> dict:
        with self.http(i) as http: return http.get(f"/jobs/{job_id}", headers=ADMIN).json()


@pytest.fixture(scope="module")
def stack(tmp_path_factory, mirror) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("queue")
    settings = new_champion_project(root, mirror)[0]
    env = {"INCOMEOPS_JOB_LEASE_SECONDS": str(LEASE_SECONDS), "INCOMEOPS_MODEL_POLL_SECONDS": str(POLL_SECONDS),
           "INCOMEOPS_MONITOR_INTERVAL_MINUTES": str(INTERVAL_MINUTES)}
    s = Stack(settings, root, env)
    s.env["INCOMEOPS_BROKER_URL"] = s.broker
    try:
        s.start_redis()
        s.start_worker()
        s.apis = [s.api(), s.api()]
        for api in s.apis: api.server.start()            # both start at once; each loads the champion
        for api in s.apis: api.server.wait_ready()
        yield s
    finally:
        for server in (*s.apis, s.worker, s.redis):
            if server is not None: server.stop()
        kill_processes(notebook_processes(settings))


@pytest.fixture(autouse=True)
def settled(request) -> Iterator[None]:
    "Each test of the stack starts with Redis and a worker running, and leaves no job active and no notebook running."
    if "stack" not in request.fixturenames:
        yield
        return
    stack = request.getfixturevalue("stack")
    if stack.redis.proc.poll() is not None: stack.start_redis()
    if stack.worker.proc.poll() is not None: stack.start_worker()
    yield
    with stack.http(0) as http:
        for job in http.get("/jobs", headers=ADMIN, params={"limit": 500}).json():
            if job["status"] in ("queued", "running"): http.post(f"/jobs/{job['id']}/cancel", headers=ADMIN)
    if left := lingering(stack.settings, [], 30): kill_processes(notebook_processes(stack.settings))
    assert not left, f"notebook processes still running after the test: {left}"


def predicts(api: ApiServer) -> bool:
    return httpx.post(f"{api.url}/predict", json=EXAMPLE_PERSON, timeout=30).status_code == 200


def notebook_of(pid: int) -> list[psutil.Process]:
    "Process `pid`'s descendants that belong to a job's notebook (papermill and its kernel)."
    return [p for p in descendants(pid) if any(w in cmdline_of(p) for w in ("papermill", "ipykernel"))]


def lingering(settings, seen: list, timeout: float) -> list[str]:
    "The notebook processes still alive after waiting up to `timeout` s for them to go (empty: all gone)."
    deadline = time.monotonic() + timeout
    while (alive := notebook_processes(settings, seen)) and time.monotonic() < deadline: time.sleep(0.25)
    return [f"{p.pid} {cmdline_of(p)[:160]}" for p in alive if p.is_running()]


def start_running_training(stack: Stack, i: int, params: dict = QUICK_TRAIN) -> tuple[str, list[psutil.Process]]:
    "Start a training through replica `i` and wait until the worker runs its kernel; (job id, the notebook's processes seen)."
    with stack.http(i) as http: started = http.post("/jobs/train", json=params, headers=ADMIN)
    assert started.status_code == 202, started.text
    job_id, seen = started.json()["id"], {}
    def kernel_running():
        for p in notebook_of(stack.worker.proc.pid): seen.setdefault(p.pid, p)
        job = stack.job(job_id, i)
        assert job["status"] in ("queued", "running"), f"job {job_id} ended ({job['status']}: {job['error']}) before the test could act"
        return job["status"] == "running" and any("ipykernel" in cmdline_of(p) for p in seen.values())
    wait_until(kernel_running, 120, 0.2, f"job {job_id}'s kernel starting on the worker")
    time.sleep(1)
    return job_id, list(seen.values())


def finished(stack: Stack, job_id: str, timeout: float, i: int = 0) -> dict:
    with stack.http(i) as http: return wait_for_job(http, job_id, ADMIN, timeout=timeout)


# ----------------------------------------------------------------------------------------------- running on the worker
def test_a_training_through_one_replica_runs_once_on_the_worker_and_both_replicas_serve_its_promotion(stack):
    with stack.http(0) as http: before = http.get("/model").json()["version"]
    with stack.http(1) as http: started = http.post("/jobs/train", json=PROMOTING_TRAIN, headers=ADMIN)
    assert started.status_code == 202, started.text
    job_id, on_worker, on_apis = started.json()["id"], set(), set()
    def done():
        on_worker.update(cmdline_of(p) for p in notebook_of(stack.worker.proc.pid))
        on_apis.update(cmdline_of(p) for api in stack.apis for p in notebook_of(api.proc.pid))
        job = stack.job(job_id, 1)
        return job if job["status"] not in ("queued", "running") else None
    job = wait_until(done, 540, 0.5, f"training job {job_id} ending")
    assert job["status"] == "succeeded", job["error"]
    outcome = job["outcome"]
    assert outcome["promoted"], f"the quick LightGBM did not pass the gate against the test champion: {outcome['decision']}"
    new = str(outcome["model_version"])
    finished_at = datetime.fromisoformat(job["finished_at"].replace("Z", "+00:00"))

    def serving() -> list[str]:
        versions = [httpx.get(f"{api.url}/model", timeout=10).json().get("version") for api in stack.apis]
        return versions if versions == [new, new] else None
    wait_until(serving, POLL_SECONDS + 60, 0.1, f"both replicas serving version {new}")
    lag = (datetime.now(finished_at.tzinfo) - finished_at).total_seconds()
    print(f"\ntraining job {job_id} on the worker: {job['seconds']:.1f} s, version {before} -> {new}; both replicas served it "
          f"{lag:.1f} s after the job ended (poll every {POLL_SECONDS} s, then the load)")

    assert any("papermill" in c for c in on_worker), "the worker never ran the notebook"
    assert not on_apis, f"an API replica ran a notebook: {sorted(on_apis)[:2]}"
    runs = [outcome["run_id"] in (server.output() if isinstance(server, ApiServer) else server.log_file.read_text(errors="replace"))
            for server in (stack.worker, *stack.apis)]
    assert runs == [True, False, False], f"the run appears in the logs of (worker, api 1, api 2): {runs}"
    seen = [stack.job(job_id, i) for i in (0, 1)]
    assert seen[0] == seen[1] and seen[0]["status"] == "succeeded"      # the same record through either replica
    with stack.http(0) as http:
        assert [j["id"] for j in http.get("/jobs", headers=ADMIN, params={"kind": "train"}).json()].count(job_id) == 1


def test_a_monitoring_check_runs_on_the_worker_with_the_champion_it_loads(stack):
    with stack.http(0) as http:
        started = http.post("/jobs/monitor", headers=ADMIN)
        assert started.status_code == 202, started.text
        job = wait_for_job(http, started.json()["id"], ADMIN, timeout=120)
        served = http.get("/model").json()["version"]
    assert job["status"] == "succeeded", job["error"]
    assert job["outcome"]["champion"]["version"] == served
    assert stack.job(job["id"], 1) == job


# ----------------------------------------------------------------------------------------------- one job per kind
def test_two_trainings_asked_at_the_same_moment_on_two_replicas_get_one_202_and_one_409_naming_the_other(stack):
    barrier, answers = threading.Barrier(2), [None, None]
    def ask(i: int):
        with stack.http(i) as http:
            barrier.wait()
            answers[i] = http.post("/jobs/train", json=QUICK_TRAIN, headers=ADMIN)
    threads = [threading.Thread(target=ask, args=(i,)) for i in (0, 1)]
    for t in threads: t.start()
    for t in threads: t.join(60)
    statuses = sorted(a.status_code for a in answers)
    assert statuses == [202, 409], [(a.status_code, a.text[:300]) for a in answers]
    accepted = next(a for a in answers if a.status_code == 202).json()
    refused = next(a for a in answers if a.status_code == 409).json()["detail"]
    assert accepted["id"] in refused and "already" in refused, refused
    with stack.http(0) as http:
        assert [j["kind"] for j in http.get("/jobs", headers=ADMIN).json() if j["status"] in ("queued", "running")] == ["train"]
        retrain = http.post("/jobs/retrain", headers=ADMIN)          # training and retraining share one slot
        assert retrain.status_code == 409 and accepted["id"] in retrain.json()["detail"], retrain.text


# ----------------------------------------------------------------------------------------------- jobs that end
def test_cancelling_through_the_other_replica_kills_the_notebook_on_the_worker_and_registers_nothing(stack):
    before = registry_state(stack.settings)
    job_id, seen = start_running_training(stack, 0)
    try:
        with stack.http(1) as http: cancel = http.post(f"/jobs/{job_id}/cancel", headers=ADMIN)
        asked = time.monotonic()
        assert cancel.status_code == 200 and cancel.json()["status"] == "cancelled", cancel.text
        left = lingering(stack.settings, seen, 30)
        gone_after = time.monotonic() - asked
        job = finished(stack, job_id, 60)
        problems = []
        if left: problems.append(f"notebook processes still running 30 s after the cancel: {left}")
        if job["status"] != "cancelled": problems.append(f"the job ended {job['status']!r}: {job['error']}")
        if (after := registry_state(stack.settings)) != before: problems.append(f"the registry changed: {before} -> {after}")
        if not all(predicts(api) for api in stack.apis): problems.append("a replica no longer predicts")
        print(f"\ncancelled job {job_id}: its notebook ({len(seen)} processes) gone {gone_after:.1f} s after the cancel")
        assert not problems, "; ".join(problems)
    finally: kill_processes(notebook_processes(stack.settings, seen))


def test_a_worker_killed_mid_training_fails_its_job_within_the_lease_and_the_next_job_runs(stack):
    before = registry_state(stack.settings)
    job_id, seen = start_running_training(stack, 0)
    try:
        stack.worker.proc.send_signal(signal.SIGKILL)               # no shutdown: as the OOM killer or a lost node would
        stack.worker.proc.wait(30)
        killed = time.monotonic()
        job = finished(stack, job_id, 90, i=1)                      # polling the replica reaps, as a client's polling would
        failed_after = time.monotonic() - killed
        left = lingering(stack.settings, seen, 3 * LEASE_SECONDS + 30)
        gone_after = time.monotonic() - killed
        problems = []
        if job["status"] != "failed": problems.append(f"the job ended {job['status']!r}, not 'failed'")
        if job["error"] != LOST.format(lease=LEASE_SECONDS): problems.append(f"the error does not say why: {job['error']!r}")
        if left: problems.append(f"notebook processes still running {3 * LEASE_SECONDS + 30} s after the kill: {left}")
        if (after := registry_state(stack.settings)) != before: problems.append(f"the registry changed: {before} -> {after}")
        if not all(predicts(api) for api in stack.apis): problems.append("a replica no longer predicts")
        stack.start_worker()
        with stack.http(1) as http:
            monitor = http.post("/jobs/monitor", headers=ADMIN)
            train = http.post("/jobs/train", json=QUICK_TRAIN, headers=ADMIN)    # the model slot is free again
            if train.status_code != 202: problems.append(f"the next training answered {train.status_code}: {train.text[:300]}")
            else: http.post(f"/jobs/{train.json()['id']}/cancel", headers=ADMIN)
            if monitor.status_code != 202: problems.append(f"the next monitoring check answered {monitor.status_code}")
            elif (done := wait_for_job(http, monitor.json()["id"], ADMIN, timeout=120))["status"] != "succeeded":
                problems.append(f"the next job on the new worker ended {done['status']}: {done['error']}")
        print(f"\nworker SIGKILLed mid-training: job {job_id} failed {failed_after:.1f} s later (lease {LEASE_SECONDS} s), "
              f"its notebook ({len(seen)} processes) gone after {gone_after:.1f} s; registry {registry_state(stack.settings)}")
        assert not problems, "; ".join(problems)
    finally: kill_processes(notebook_processes(stack.settings, seen))


def test_a_worker_stopped_with_sigterm_records_its_job_as_interrupted_and_kills_the_notebook(stack):
    job_id, seen = start_running_training(stack, 1)
    try:
        stack.worker.proc.send_signal(signal.SIGTERM)               # docker stop: a warm shutdown
        exit_status = stack.worker.proc.wait(60)
        job = stack.job(job_id)
        left = lingering(stack.settings, seen, 10)
        assert (job["status"], job["error"]) == ("failed", WORKER_STOPPED), job
        assert exit_status == 0 and not left, (exit_status, left)
    finally: kill_processes(notebook_processes(stack.settings, seen))


def test_with_redis_down_job_requests_answer_503_and_predictions_go_on(stack):
    stack.redis.stop()
    try:
        with stack.http(0) as http:
            started = time.monotonic()
            refused = http.post("/jobs/train", json=QUICK_TRAIN, headers=ADMIN)
            answered_in = time.monotonic() - started
            assert refused.status_code == 503 and "broker" in refused.json()["detail"], refused.text
            assert refused.headers.get("retry-after"), refused.headers
            failed = http.get("/jobs", headers=ADMIN, params={"limit": 1}).json()[0]
            assert (failed["kind"], failed["status"], failed["error"]) == ("train", "failed", BROKER_DOWN)
        assert all(predicts(api) for api in stack.apis)
    finally: stack.start_redis()
    with stack.http(1) as http:                                         # the worker reconnects by itself
        back = time.monotonic()
        started = http.post("/jobs/monitor", headers=ADMIN)
        assert started.status_code == 202, started.text
        assert wait_for_job(http, started.json()["id"], ADMIN, timeout=120)["status"] == "succeeded"
    print(f"\nwith Redis down: 503 in {answered_in:.2f} s, predictions answered; after Redis came back, "
          f"a job ran {time.monotonic() - back:.1f} s later")


# ----------------------------------------------------------------------------------------------- the schedule
def test_beat_runs_the_scheduled_check_once_per_interval_and_the_replicas_none(stack):
    with stack.http(0) as http: known = {j["id"] for j in http.get("/jobs", headers=ADMIN, params={"limit": 500}).json()}
    beat = stack.start_beat()
    started = time.monotonic()
    try:
        def new_monitor_jobs() -> list[dict]:
            beat.check_running()
            with stack.http(1) as http:
                jobs = [j for j in http.get("/jobs", headers=ADMIN, params={"kind": "monitor", "limit": 500}).json() if j["id"] not in known]
            return jobs if sum(j["status"] == "succeeded" for j in jobs) >= 2 else None
        jobs = wait_until(new_monitor_jobs, 8 * INTERVAL_MINUTES * 60, 0.5, "two scheduled monitoring checks")
    finally: beat.stop()
    elapsed = time.monotonic() - started
    intervals = elapsed / (INTERVAL_MINUTES * 60)
    print(f"\nbeat: {len(jobs)} monitoring checks in {elapsed:.0f} s ({intervals:.1f} intervals of {INTERVAL_MINUTES * 60:g} s) "
          f"with two replicas that have the same interval set")
    assert all(j["params"] == {"scheduled": True} for j in jobs), [j["params"] for j in jobs]     # none from a replica
    assert len(jobs) <= intervals + 1, f"{len(jobs)} checks in {intervals:.1f} intervals"


# ----------------------------------------------------------------------------------------------- the slot rule on PostgreSQL
def claim_at_once(store, kinds: tuple[str, str]) -> list:
    "Claim a job of each of `kinds` at the same moment from two threads: each job, or the JobConflict it got."
    from incomeops.jobs import JobConflict, claim_job
    barrier, answers = threading.Barrier(2), [None, None]
    def claim(i: int):
        barrier.wait()
        try: answers[i] = claim_job(store, kinds[i], {})
        except JobConflict as e: answers[i] = e
    threads = [threading.Thread(target=claim, args=(i,)) for i in (0, 1)]
    for t in threads: t.start()
    for t in threads: t.join(30)
    return answers


@pytest.mark.skipif(not os.environ.get("INCOMEOPS_TEST_POSTGRES_URL"), reason="no PostgreSQL: INCOMEOPS_TEST_POSTGRES_URL is not set and no local test database answers (`make system-deps` sets one up)")
def test_on_postgresql_too_one_of_two_simultaneous_claims_wins():
    "The unique partial index behind one job per kind, on PostgreSQL: in a schema of its own, dropped at the end."
    import sqlalchemy as sa

    from incomeops.jobs import JobConflict, claim_job
    from incomeops.store import Store
    url, schema = os.environ["INCOMEOPS_TEST_POSTGRES_URL"], f"queue_{os.getpid()}"
    admin = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    with admin.begin() as conn: conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
    try:
        store = Store(f"{url}?options=-csearch_path%3D{schema}")
        try:
            for kinds in (("train", "train"), ("train", "retrain")):
                answers = claim_at_once(store, kinds)
                won = [a for a in answers if isinstance(a, dict)]
                lost = [a for a in answers if isinstance(a, JobConflict)]
                assert len(won) == 1 and len(lost) == 1 and won[0]["id"] in str(lost[0]), answers
                store.update_job(won[0]["id"], status="failed")
            assert claim_job(store, "monitor", {})["status"] == "queued"            # another slot
        finally: store.close()
    finally:
        with admin.begin() as conn: conn.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
        admin.dispose()
