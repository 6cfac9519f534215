"""The delivery files: Dockerfile, compose.yaml, the GitHub workflows, dependabot, the pre-commit hooks, .ci/run.

There is no Docker engine on the build machine, so the image is proven in parts: hadolint checks the Dockerfile; the
Dockerfile's own `uv sync` command builds a fresh environment from uv.lock out of the files its COPY lines name; and
the image's entrypoint starts the API from that environment against a registered champion, over real HTTP.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pandas as pd
import pytest
import yaml

from conftest import REPO, free_port
from incomeops.cleaning import MODEL_INPUTS
from incomeops.config import Settings
from incomeops.schema import EXAMPLE_PERSON

BIN = Path(sys.executable).parent  # the project's .venv/bin
UV = REPO / ".tools" / "bin" / "uv"
WORKFLOWS = sorted((REPO / ".github" / "workflows").glob("*.yml"))
ENTRYPOINT_ROLES = {"api", "ui", "train", "bootstrap", "monitor"}
pytestmark = pytest.mark.timeout(900)   # the first start of a clean environment compiles every module: slow on a busy machine


def run(*cmd, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=120, **kw)


# ------------------------------------------------------------------------------------------------ the Dockerfile
def dockerfile_stages() -> list[list[tuple[str, str]]]:
    "The Dockerfile's instructions, `(KEYWORD, arguments)` with continuation lines joined, grouped by stage."
    text = re.sub(r"\\\n", " ", (REPO / "Dockerfile").read_text())
    stages: list[list[tuple[str, str]]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"): continue
        keyword, _, args = line.partition(" ")
        if keyword.upper() == "FROM": stages.append([])
        if stages: stages[-1].append((keyword.upper(), " ".join(args.split())))
    return stages


def instructions(stage, keyword: str) -> list[str]:
    return [args for k, args in stage if k == keyword]


def context_copies(stage) -> list[tuple[list[str], str]]:
    "The stage's COPY instructions that take files from the build context: (sources, destination)."
    out = []
    for args in instructions(stage, "COPY"):
        words = [w for w in shlex.split(args) if not w.startswith("--")]
        if "--from=" not in args: out.append((words[:-1], words[-1]))
    return out


def uv_sync_args(stage) -> list[list[str]]:
    "The arguments of each `uv sync` the stage runs."
    found = []
    for args in instructions(stage, "RUN"):
        for command in re.split(r"&&|;", args):
            words = shlex.split(command)
            if "uv" in words and words[words.index("uv") + 1:words.index("uv") + 2] == ["sync"]:
                found.append(words[words.index("uv") + 2:])
    return found


def dockerignore_excludes(path: str) -> bool:
    "Whether .dockerignore keeps `path` (relative, POSIX) out of the build context: the last matching rule wins."
    excluded = False
    for rule in (REPO / ".dockerignore").read_text().splitlines():
        rule = rule.strip()
        if not rule or rule.startswith("#"): continue
        negate, pattern = rule.startswith("!"), rule.lstrip("!").strip("/")
        regex = re.escape(pattern).replace(r"\*\*/", "(?:.*/)?").replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        parts = path.strip("/").split("/")
        if any(re.fullmatch(regex, "/".join(parts[:i])) for i in range(1, len(parts) + 1)): excluded = not negate
    return excluded


def test_dockerfile_passes_hadolint():
    res = run(BIN / "hadolint", "Dockerfile", cwd=REPO)
    assert res.returncode == 0, res.stdout + res.stderr


def test_dockerfile_builds_a_small_non_root_image_that_runs_the_entrypoint():
    builder, final = dockerfile_stages()[0], dockerfile_stages()[-1]
    assert len(dockerfile_stages()) >= 2, "multi-stage: the build tools stay in the builder"
    assert instructions(final, "FROM")[0] == "python:3.11-slim"
    # the builder installs the locked runtime dependencies only, with the uv version the Makefile bootstraps
    syncs = uv_sync_args(builder)
    assert syncs and all({"--frozen", "--no-dev"} <= set(s) for s in syncs)
    assert not any(a.startswith(("--extra", "--all-extras", "--group", "--all-groups")) for s in syncs for a in s)
    uv_version = re.search(r"^UV_VERSION := (\S+)", (REPO / "Makefile").read_text(), re.M).group(1)
    assert f"UV_VERSION={uv_version}" in instructions(builder, "ARG")
    # the final stage: no package managers or build tools run, an unprivileged user, telemetry off, a health check
    assert not [r for r in instructions(final, "RUN") if re.search(r"\b(pip|uv|apt-get|apt|gcc|curl)\b", r)]
    user = instructions(final, "USER")[-1]
    assert user.split(":")[0] not in ("root", "0")
    env = " ".join(instructions(final, "ENV"))
    for setting in ("PYTHONDONTWRITEBYTECODE=1", "MLFLOW_DISABLE_TELEMETRY=true", "YDATA_PROFILING_NO_ANALYTICS=1", "DO_NOT_TRACK=1"):
        assert setting in env
    (healthcheck,) = instructions(final, "HEALTHCHECK")
    assert '"python", "/app/deploy/healthcheck.py"' in healthcheck
    assert instructions(final, "ENTRYPOINT") == ['["/app/deploy/entrypoint.sh"]'] and instructions(final, "CMD") == ['["api"]']
    assert "--from=builder /app/.venv /app/.venv" in " ".join(instructions(final, "COPY"))


def test_every_file_the_image_copies_exists_and_nothing_else_reaches_the_build():
    for stage in dockerfile_stages():
        for sources, _ in context_copies(stage):
            for source in sources:
                assert (REPO / source).exists(), f"COPY {source}: not in the repository"
                assert not dockerignore_excludes(source), f"COPY {source}: .dockerignore keeps it out of the build context"
    for inside in ("incomeops/config.py", "app/main.py", "nbs/pipelines/train.ipynb", "deploy/entrypoint.sh"):
        assert not dockerignore_excludes(inside), inside
    for outside in ("tests/test_api.py", "nbs/01_data.ipynb", "data/raw/adult.data", "mlflow/mlflow.db", ".venv/bin/python",
                    ".git/HEAD", "reports/profile.html", "app/__pycache__/main.cpython-311.pyc", "deploy/postgres/10-mlflow-database.sql"):
        assert dockerignore_excludes(outside), outside


# ------------------------------------------------------------------------------------------------ compose.yaml
def interpolate(value: str) -> str:
    "A compose string with each `${VAR:-default}` replaced by its default and each other `${VAR...}` by ''."
    return re.sub(r"\$\{[A-Z0-9_]+(?::?-([^}]*))?[^}]*\}", lambda m: m.group(1) or "", value)


@pytest.fixture(scope="module")
def compose() -> dict:
    res = run(BIN / "check-jsonschema", "--builtin-schema", "vendor.compose-spec", "compose.yaml", cwd=REPO)
    assert res.returncode == 0, res.stdout + res.stderr
    return yaml.safe_load((REPO / "compose.yaml").read_text())


def test_compose_stack_has_every_service_with_health_checks_and_start_up_order(compose):
    services = compose["services"]
    assert {"postgres", "mlflow", "trainer", "api", "ui"} <= set(services)
    one_shot = {name for name, s in services.items() if s.get("restart") == "no"}
    assert "trainer" in one_shot
    for name, service in services.items():
        if name not in one_shot:
            assert service["healthcheck"]["test"], f"{name} has no health check"
    conditions = {name: {dep: c["condition"] for dep, c in s.get("depends_on", {}).items()} for name, s in services.items()}
    assert conditions["mlflow"]["postgres"] == "service_healthy"
    assert conditions["trainer"]["mlflow"] == "service_healthy"
    assert conditions["api"] == {"trainer": "service_completed_successfully", "mlflow": "service_healthy", "postgres": "service_healthy"}
    assert conditions["ui"]["api"] == "service_healthy"
    # each IncomeOps service runs an entrypoint role or a command of the environment
    for name, service in services.items():
        if "build" in service:
            role = service["command"][0]
            assert role in ENTRYPOINT_ROLES or (BIN / role).exists(), f"{name}: unknown command {role}"


def test_compose_api_is_stateless_behind_postgres_and_mlflow(compose):
    services = compose["services"]
    api = services["api"]
    assert "volumes" not in api, "the API keeps no state of its own"
    assert api["deploy"]["replicas"] >= 2
    env = {k: interpolate(str(v)) for k, v in api["environment"].items() if v is not None}
    assert all(k.removeprefix("INCOMEOPS_").lower() in Settings.model_fields for k in api["environment"]), "unknown setting"
    tracking, database = urlsplit(env["INCOMEOPS_TRACKING_URI"]), urlsplit(env["INCOMEOPS_DATABASE_URL"])
    assert (tracking.scheme, tracking.hostname) == ("http", "mlflow")
    assert (database.scheme, database.hostname, database.path) == ("postgresql+psycopg", "postgres", "/incomeops")
    # with no key where compose runs, the admin endpoints stay off (an empty key would be a valid key)
    assert api["environment"]["INCOMEOPS_API_KEY"] is None
    assert services["ui"]["environment"] == {"INCOMEOPS_API_URL": "http://api:8000", "INCOMEOPS_PREDICT_API_KEY": None}
    # a stop lets uvicorn finish its requests (20 s) and the prediction log drain before the container is killed
    assert int(api["stop_grace_period"].removesuffix("s")) >= 40
    # MLflow: PostgreSQL backend store in its own database, proxied artifacts on a named volume, one worker
    cmd = [interpolate(str(c)) for c in services["mlflow"]["command"]]
    backend = urlsplit(cmd[cmd.index("--backend-store-uri") + 1])
    assert (backend.scheme, backend.hostname, backend.path) == ("postgresql+psycopg", "postgres", "/mlflow")
    assert "--serve-artifacts" in cmd and cmd[cmd.index("--workers") + 1] == "1"
    artifacts = cmd[cmd.index("--artifacts-destination") + 1]
    assert any(v.split(":")[0] in compose["volumes"] and v.split(":")[1] == artifacts for v in services["mlflow"]["volumes"])
    # both databases exist: the service one from POSTGRES_DB, MLflow's from the init script
    postgres = services["postgres"]
    assert postgres["environment"]["POSTGRES_DB"] == "incomeops"
    init = [v for v in postgres["volumes"] if v.split(":")[1] == "/docker-entrypoint-initdb.d"]
    assert init and "CREATE DATABASE mlflow" in "".join(p.read_text() for p in (REPO / init[0].split(":")[0]).glob("*.sql"))


# ------------------------------------------------------------------------------------------------ workflows
def makefile_targets() -> dict[str, tuple[list[str], bool]]:
    "Each Makefile target: its prerequisites that are targets too, and whether it has a recipe of its own."
    found = {}
    for m in re.finditer(r"^([a-z][a-z0-9_-]*):(?!=)([^#\n]*).*\n(\t)?", (REPO / "Makefile").read_text(), re.M):
        found[m.group(1)] = ([p for p in m.group(2).split() if not p.startswith("$")], m.group(3) is not None)
    return found


def work_done(targets: list[str]) -> set[str]:
    "The targets that `make targets...` runs a recipe for, prerequisites included (`test` only groups others)."
    known, seen, todo = makefile_targets(), set(), list(targets)
    while todo:
        t = todo.pop()
        if t not in seen: seen.add(t); todo.extend(known.get(t, ([], True))[0])
    return {t for t in seen if known.get(t, ([], True))[1]}


def make_targets(script: str) -> list[str]:
    "The targets of each `make ...` command in a shell script (comments, variables such as X=1 and options left out)."
    script = re.sub(r"(?:^|\s)#.*", "", script)
    return [w for m in re.finditer(r"(?:^|[;&|]\s*|\s)make\s+([^\n;&|]*)", script, re.M)
            for w in shlex.split(m.group(1)) if "=" not in w and not w.startswith("-")]


def run_scripts(workflow: Path) -> list[str]:
    spec = yaml.safe_load(workflow.read_text())
    return [step["run"] for job in spec["jobs"].values() for step in job.get("steps", []) if "run" in step]


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=lambda p: p.name)
def test_workflow_is_valid_and_calls_only_what_the_repository_has(workflow):
    res = run(BIN / "check-jsonschema", "--builtin-schema", "vendor.github-workflows", workflow, cwd=REPO)
    assert res.returncode == 0, res.stdout + res.stderr
    spec = yaml.safe_load(workflow.read_text())
    assert "permissions" in spec, "the token's permissions are stated"
    targets = makefile_targets()
    for script in run_scripts(workflow):
        for target in make_targets(script):
            assert target in targets, f"{workflow.name}: `make {target}` is not a Makefile target"
        paths = re.findall(r"(?:^|\s)((?:\./)?(?:scripts|\.ci|deploy)/[\w./-]+)", script) + re.findall(r"\bbash\s+([\w./-]+)", script)
        for path in paths:
            assert (REPO / path).exists(), f"{workflow.name}: {path} does not exist"
        for tool in re.findall(r"\.venv/bin/([\w.-]+)", script):
            assert (BIN / tool).exists(), f"{workflow.name}: .venv/bin/{tool} is not installed by `make install`"
    for job in spec["jobs"].values():
        for step in job.get("steps", []):
            if "uses" in step: assert re.search(r"@v\d+$", step["uses"]), f"{step['uses']}: pin a major version"


def test_each_workflow_does_its_job():
    spec = {w.stem: yaml.safe_load(w.read_text()) for w in WORKFLOWS}
    assert {"ci", "docs", "release", "train", "monitor"} <= set(spec)
    uses = {name: " ".join(s.get("uses", "") for j in w["jobs"].values() for s in j.get("steps", [])) for name, w in spec.items()}
    runs = {name: "\n".join(run_scripts(REPO / ".github" / "workflows" / f"{name}.yml")) for name in spec}
    assert {"make lint", "make train-smoke", "make docs", "make pytest", "make nbtest"} <= {f"make {t}" for t in make_targets(runs["ci"])}
    assert "actions/upload-artifact" in uses["ci"]
    assert "make docs" in runs["docs"] and "actions/upload-pages-artifact" in uses["docs"] and "actions/deploy-pages" in uses["docs"]
    release = spec["release"]
    assert release[True]["push"]["tags"] == ["v*"]  # YAML 1.1 reads the key `on` as True
    for action in ("docker/login-action", "docker/metadata-action", "docker/build-push-action"): assert action in uses["release"]
    assert "make train" in runs["release"] and "model_card.md" in runs["release"]
    train = spec["train"][True]
    assert "workflow_dispatch" in train and train["schedule"] and "trials" in train["workflow_dispatch"]["inputs"]
    assert "make train" in runs["train"] and "actions/upload-artifact" in uses["train"]
    monitor = spec["monitor"][True]
    assert "workflow_dispatch" in monitor and monitor["schedule"] and ".venv/bin/incomeops monitor" in runs["monitor"]


def test_ci_run_is_the_local_mirror_of_the_ci_workflow():
    ci_run = (REPO / ".ci" / "run").read_text()
    workflow = "\n".join(run_scripts(REPO / ".github" / "workflows" / "ci.yml"))
    assert work_done(make_targets(ci_run)) == work_done(make_targets(workflow))
    exported = dict(re.findall(r"^export (INCOMEOPS_TEST_\w+)=(\S+)", ci_run, re.M))
    env = yaml.safe_load((REPO / ".github" / "workflows" / "ci.yml").read_text())["jobs"]["test"]["env"]
    assert exported and exported == {k: v for k, v in env.items() if k.startswith("INCOMEOPS_TEST_")}


def test_dependabot_updates_python_actions_and_docker():
    res = run(BIN / "check-jsonschema", "--builtin-schema", "vendor.dependabot", ".github/dependabot.yml", cwd=REPO)
    assert res.returncode == 0, res.stdout + res.stderr
    updates = yaml.safe_load((REPO / ".github" / "dependabot.yml").read_text())["updates"]
    assert {"uv", "github-actions", "docker"} <= {u["package-ecosystem"] for u in updates}


# ------------------------------------------------------------------------------------------------ pre-commit
def test_pre_commit_hooks_are_local_and_pass_offline(tmp_path):
    config = yaml.safe_load((REPO / ".pre-commit-config.yaml").read_text())
    hooks = [h for repo in config["repos"] for h in repo["hooks"]]
    assert [r["repo"] for r in config["repos"]] == ["local"]
    assert {"ruff", "nbdev-clean"} <= {h["id"] for h in hooks}
    for hook in hooks:
        assert hook["language"] == "system"
        tool = shlex.split(hook["entry"])[0]
        assert tool.startswith(".venv/bin/") and (BIN / Path(tool).name).exists(), tool
    # a throwaway git repository with the delivery files and this test: every hook that applies passes
    work = tmp_path / "repo"
    for rel in (".pre-commit-config.yaml", "pyproject.toml", "Dockerfile", "compose.yaml", ".github", "tests/test_delivery.py"):
        (work / rel).parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if (REPO / rel).is_dir() else shutil.copy)(REPO / rel, work / rel)
    (work / ".venv").symlink_to(BIN.parent)
    (work / ".gitignore").write_text(".venv\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")} | {"PRE_COMMIT_HOME": str(tmp_path / "cache")}
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"]):
        subprocess.run(cmd, cwd=work, env=env, check=True, capture_output=True)
    res = run(BIN / "pre-commit", "run", "--all-files", cwd=work, env=env)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "ruff" in res.stdout and "hadolint" in res.stdout and "Failed" not in res.stdout


# ------------------------------------------------------------------------------------------------ install + start
@pytest.fixture(scope="module")
def image_tree(tmp_path_factory) -> Path:
    """The image's /app, built without Docker: the builder's files and its `uv sync` into a fresh environment at
    app/.venv (UV_PROJECT_ENVIRONMENT, as in the builder), then the final stage's files beside it."""
    root = tmp_path_factory.mktemp("image")
    build, app = root / "build", root / "app"
    stages = dockerfile_stages()
    for stage, workdir in ((stages[0], build), (stages[-1], app)):
        assert instructions(stage, "WORKDIR") == ["/app"]
        for sources, dest in context_copies(stage):  # Docker's rules: a folder's content goes into dest
            folder = workdir / dest.removeprefix("/app/")
            for source in map(REPO.joinpath, sources):
                if source.is_dir(): shutil.copytree(source, folder, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__"))
                else:
                    target = folder / source.name if dest.endswith("/") or len(sources) > 1 else folder
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(source, target)
    # The builder's last `uv sync` with its settings, except two that only shape the image's layers: UV_LINK_MODE=copy
    # (its cache is a mount on another file system; here uv hard-links from its cache) and UV_COMPILE_BYTECODE=1
    # (about 90 s here, for a faster first start of the container). Neither changes what gets installed.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("UV_", "VIRTUAL_ENV"))}
    env |= {"UV_PYTHON_DOWNLOADS": "never", "UV_PROJECT_ENVIRONMENT": str(app / ".venv")}
    started = time.perf_counter()
    res = subprocess.run([str(UV), "sync", *uv_sync_args(stages[0])[-1]], cwd=build, env=env,
                         capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stderr[-3000:]
    print(f"\nclean environment from uv.lock: {time.perf_counter() - started:.1f} s")
    return app


def test_clean_environment_has_the_runtime_and_not_the_dev_tools(image_tree):
    python = image_tree / ".venv" / "bin" / "python"
    kernel = json.loads((REPO / "nbs" / "pipelines" / "train.ipynb").read_text())["metadata"]["kernelspec"]["name"]
    probe = ("import importlib.util as u, json, incomeops, sys; from jupyter_client.kernelspec import KernelSpecManager as K; "
             f"spec = K().get_kernel_spec({kernel!r}); "
             "print(json.dumps({'dev': [m for m in ('pytest', 'nbdev', 'ruff', 'ydata_profiling', 'jupyterlab', 'playwright') if u.find_spec(m)], "
             "'runtime': [m for m in ('uvicorn', 'streamlit', 'papermill', 'mlflow', 'onnxruntime', 'psycopg') if not u.find_spec(m)], "
             "'library': incomeops.__file__, 'kernel_dir': spec.resource_dir, 'kernel_argv0': spec.argv[0], 'prefix': sys.prefix}))")
    res = run(python, "-c", probe, cwd=image_tree, env={**os.environ, "JUPYTER_DATA_DIR": str(image_tree / "no-user-kernels")})
    assert res.returncode == 0, res.stderr
    found = json.loads(res.stdout)
    assert found["dev"] == [] and found["runtime"] == []
    assert found["library"].startswith(found["prefix"]), "the library is installed in the environment, not linked to sources"
    # Papermill's kernel for the training notebook is the environment's own python
    assert found["kernel_dir"].startswith(found["prefix"]) and found["kernel_argv0"] in ("python", str(python))


class Entrypoint:
    "deploy/entrypoint.sh of the image tree, with the clean environment on PATH and a project's settings."
    def __init__(self, app: Path, settings: Settings, **env):
        venv = app / ".venv"
        self.script = app / "deploy" / "entrypoint.sh"
        base = {k: v for k, v in os.environ.items() if not k.startswith(("INCOMEOPS_", "VIRTUAL_ENV", "PYTHON"))}
        self.env = {**base, **settings.as_env(), "VIRTUAL_ENV": str(venv), "PATH": f"{venv / 'bin'}:{base['PATH']}",
                    "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1", "OMP_NUM_THREADS": "1", **env}

    def run(self, *args: str, timeout: float = 400) -> subprocess.CompletedProcess:
        return subprocess.run([str(self.script), *args], env=self.env, capture_output=True, text=True, timeout=timeout, cwd="/")

    def start(self, *args: str, log: Path) -> subprocess.Popen:
        return subprocess.Popen([str(self.script), *args], env=self.env, cwd="/", stdout=open(log, "wb"), stderr=subprocess.STDOUT)


@pytest.fixture(scope="module")
def image_champion(tmp_path_factory, mirror):
    "A project of its own whose champion stays version 1 (the session's shared project gains versions as other tests retrain)."
    from api_support import new_champion_project
    return new_champion_project(tmp_path_factory.mktemp("image-served"), mirror)


def test_image_entrypoint_serves_the_champion_from_the_clean_environment(image_tree, image_champion, tmp_path):
    settings, pipeline = image_champion
    port = free_port()
    entry = Entrypoint(image_tree, settings, HOST="127.0.0.1", PORT=str(port))
    url, log = f"http://127.0.0.1:{port}", tmp_path / "api.log"
    started = time.monotonic()
    proc = entry.start("api", log=log)
    try:
        deadline = started + 400
        while True:
            assert proc.poll() is None, f"the API exited ({proc.returncode}):\n{log.read_text()}"
            assert time.monotonic() < deadline, f"the API was not ready in 400 s:\n{log.read_text()}"
            try:
                if httpx.get(f"{url}/ready", timeout=2).status_code == 200: break
            except httpx.TransportError: pass
            time.sleep(0.2)
        print(f"\nAPI ready from the clean environment after {time.monotonic() - started:.1f} s (first start: no bytecode yet)")
        with httpx.Client(base_url=url, timeout=30) as http:
            assert http.get("/health").json()["status"] == "ok"
            assert http.get("/ready").json() == {"ready": True, "model_version": "1"}
            answer = http.post("/predict", json=EXAMPLE_PERSON)
            assert answer.status_code == 200, answer.text
            expected = pipeline.predict_proba(pd.DataFrame([{c: EXAMPLE_PERSON[c] for c in MODEL_INPUTS}]))[0, 1]
            assert answer.json()["probability"] == pytest.approx(expected, abs=1e-6)
            assert answer.json()["model_version"] == "1"
        # the image's health check finds the server from its command line (the entrypoint exec'd uvicorn: same pid)
        python = image_tree / ".venv" / "bin" / "python"
        check = run(python, image_tree / "deploy" / "healthcheck.py", "--pid", proc.pid)
        assert check.returncode == 0, check.stderr
        # a stop signal reaches the server itself, which drains and exits cleanly (uvicorn re-raises the signal then)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) in (0, -signal.SIGTERM) and "Application shutdown complete" in log.read_text(), log.read_text()
        assert run(python, image_tree / "deploy" / "healthcheck.py", f"{url}/health").returncode == 1
    finally:
        if proc.poll() is None: proc.kill(); proc.wait()


def test_image_entrypoint_runs_the_form_with_its_health_check(image_tree, image_champion, tmp_path):
    port = free_port()
    entry = Entrypoint(image_tree, image_champion[0], HOST="127.0.0.1", PORT=str(port), INCOMEOPS_API_URL="http://127.0.0.1:9")
    log, python = tmp_path / "ui.log", image_tree / ".venv" / "bin" / "python"
    proc = entry.start("ui", log=log)
    try:
        deadline = time.monotonic() + 90
        while run(python, image_tree / "deploy" / "healthcheck.py", "--pid", proc.pid).returncode != 0:
            assert proc.poll() is None, f"the form exited ({proc.returncode}):\n{log.read_text()}"
            assert time.monotonic() < deadline, f"the form was not healthy in 90 s:\n{log.read_text()}"
            time.sleep(0.5)
        assert httpx.get(f"http://127.0.0.1:{port}/_stcore/health", timeout=5).text == "ok"
    finally:
        proc.send_signal(signal.SIGTERM)
        try: proc.wait(30)
        except subprocess.TimeoutExpired: proc.kill(); proc.wait()


def test_compose_trainer_leaves_an_existing_champion_alone(image_tree, image_champion):
    res = Entrypoint(image_tree, image_champion[0]).run("bootstrap", "--trials", "0")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "champion: version 1" in res.stdout and "nothing to train" in res.stdout


def test_every_cli_command_the_entrypoint_calls_exists(image_tree, image_champion):
    called = set(re.findall(r"\bincomeops (\w+)", (REPO / "deploy" / "entrypoint.sh").read_text()))
    assert {"data", "train", "monitor"} <= called
    commands = "import typer; from incomeops.cli import app; print(*typer.main.get_command(app).commands)"
    res = Entrypoint(image_tree, image_champion[0]).run("python", "-c", commands)
    assert res.returncode == 0, res.stderr
    listed = set(res.stdout.split())
    assert called <= listed, f"entrypoint.sh calls `incomeops {' / '.join(sorted(called - listed))}`, which the CLI lacks"


def test_entrypoint_runs_other_commands_in_the_environment(image_tree, image_champion):
    res = Entrypoint(image_tree, image_champion[0]).run("python", "-c", "import sys; print(sys.prefix)")
    assert res.returncode == 0 and res.stdout.strip() == str(image_tree / ".venv")
