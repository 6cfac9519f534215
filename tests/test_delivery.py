"""The delivery files: Dockerfile, compose.yaml, the GitHub workflows, dependabot, the pre-commit hooks, .ci/run.

There is no Docker engine on the build machine, so the image is proven in parts, with Docker's own tools where there
are some: hadolint checks the Dockerfile; BuildKit's parser (the `dockerfile` package) reads it; docker-py's rules for
.dockerignore give the build context; the builder stage is replayed from that context, its RUN commands run as Docker
runs them, into a fresh environment that must hold exactly uv.lock's runtime; and the image's entrypoint starts the
API and the form from that environment against a registered champion, over real HTTP.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import string
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pandas as pd
import pytest
import yaml
from docker.utils.build import exclude_paths

from conftest import LOCAL_TEST_POSTGRES, REPO
from incomeops.cleaning import MODEL_INPUTS
from incomeops.config import Settings
from incomeops.harness import Server, free_port, wait_until
from incomeops.schema import EXAMPLE_PERSON

BIN = Path(sys.executable).parent  # the project's .venv/bin
UV = REPO / ".tools" / "bin" / "uv"
WORKFLOWS = sorted((REPO / ".github" / "workflows").glob("*.yml"))
ENTRYPOINT_ROLES = {"api", "ui", "train", "bootstrap", "monitor", "worker", "beat"}
pytestmark = pytest.mark.timeout(900)   # the first start of a clean environment compiles every module: slow on a busy machine


def run(*cmd, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=120, **kw)


# ------------------------------------------------------------------------------------------------ the Dockerfile
def dockerfile_stages() -> list[list]:
    "The Dockerfile's instructions as BuildKit's own parser reads them (`dockerfile.Command`: cmd, flags, value), by stage."
    parser = pytest.importorskip("dockerfile", reason="BuildKit's Dockerfile parser is not installed: `dockerfile` (PyPI) belongs in the dev extra")
    stages: list[list] = []
    for command in parser.parse_file(str(REPO / "Dockerfile")):
        if command.cmd == "FROM": stages.append([])
        if stages: stages[-1].append(command)
    return stages


def values(stage, keyword: str) -> list[tuple[str, ...]]:
    return [c.value for c in stage if c.cmd == keyword]


def stage_env(stage, base: dict[str, str] | None = None) -> dict[str, str]:
    "The variables a stage's ARG defaults and ENV lines set, each value expanded as Docker does (`$VAR`, `${VAR}`)."
    env = dict(base or {})
    for c in stage:
        pairs = [a.partition("=")[::2] for a in c.value] if c.cmd == "ARG" else zip(c.value[::2], c.value[1::2]) if c.cmd == "ENV" else ()
        env.update({k: string.Template(v).safe_substitute(env) for k, v in pairs})
    return env


def context_copies(stage) -> list[tuple[list[str], str, tuple[str, ...]]]:
    "The stage's COPY instructions that take files from the build context: (sources, destination, flags)."
    return [(list(c.value[:-1]), c.value[-1], c.flags) for c in stage
            if c.cmd == "COPY" and not any(f.startswith("--from=") for f in c.flags)]


def build_context() -> set[str]:
    "The paths `docker build .` sends as its context: what .dockerignore lets through (docker-py's implementation of its rules)."
    rules = [r.strip() for r in (REPO / ".dockerignore").read_text().splitlines() if r.strip() and not r.strip().startswith("#")]
    return exclude_paths(str(REPO), rules)


def test_dockerfile_passes_hadolint():
    res = run(BIN / "hadolint", "Dockerfile", cwd=REPO)
    assert res.returncode == 0, res.stdout + res.stderr


def test_dockerfile_builds_a_small_non_root_image_that_runs_the_entrypoint():
    stages = dockerfile_stages()
    assert len(stages) >= 2, "multi-stage: the build tools stay in the builder"
    builder, final = stages[0], stages[-1]
    assert values(final, "FROM") == [("python:3.11-slim",)]
    uv_version = re.search(r"^UV_VERSION := (\S+)", (REPO / "Makefile").read_text(), re.M).group(1)
    assert stage_env(builder)["UV_VERSION"] == uv_version, "the builder's uv is the one the Makefile bootstraps"
    # the final stage: no Python packages but the builder's environment, nothing downloaded (its system packages, such as
    # the C compiler that compiles a champion's trees, are hadolint's to check), an unprivileged user, telemetry off, a health check
    assert not [r for (r,) in values(final, "RUN") if re.search(r"\b(pip|uv|curl|wget)\b", r)]
    assert values(final, "USER") and values(final, "USER")[-1][0].split(":")[0] not in ("root", "0")
    env = stage_env(final)
    assert {k: env.get(k) for k in ("PYTHONDONTWRITEBYTECODE", "MLFLOW_DISABLE_TELEMETRY", "YDATA_PROFILING_NO_ANALYTICS", "DO_NOT_TRACK")} == \
        {"PYTHONDONTWRITEBYTECODE": "1", "MLFLOW_DISABLE_TELEMETRY": "true", "YDATA_PROFILING_NO_ANALYTICS": "1", "DO_NOT_TRACK": "1"}
    assert values(final, "HEALTHCHECK") == [("CMD", "python", "/app/deploy/healthcheck.py")]
    # exec form (JSON), so that the stop signal reaches the entrypoint, which execs the server
    assert [(c.cmd, c.json, c.value) for c in final if c.cmd in ("ENTRYPOINT", "CMD")] == [
        ("ENTRYPOINT", True, ("/app/deploy/entrypoint.sh",)), ("CMD", True, ("api",))]
    assert [(c.flags, c.value) for c in final if c.cmd == "COPY" and "--from=builder" in c.flags] == [
        (("--from=builder",), ("/app/.venv", "/app/.venv"))]


def test_every_file_the_image_copies_reaches_the_build_and_nothing_else_does():
    context, stages = build_context(), dockerfile_stages()
    copied = {source.rstrip("/") for stage in stages for sources, _, _ in context_copies(stage) for source in sources}
    for source in copied:
        assert (REPO / source).exists(), f"COPY {source}: not in the repository"
        assert source in context, f"COPY {source}: .dockerignore keeps it out of the build context"
    def needed(path: str) -> bool:
        return path in ("Dockerfile", ".dockerignore") or any(path == c or path.startswith(c + "/") or c.startswith(path + "/") for c in copied)
    assert sorted(p for p in context if not needed(p)) == [], "the build context holds files no COPY takes"
    assert [p for p in context if "__pycache__" in p or p.endswith(".pyc")] == []
    assert {"incomeops/config.py", "app/main.py", "nbs/pipelines/train.ipynb", "deploy/entrypoint.sh"} <= context


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
    assert {"postgres", "redis", "mlflow", "trainer", "api", "worker", "beat", "ui"} <= set(services)
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
    assert conditions["worker"] == {"trainer": "service_completed_successfully", "redis": "service_healthy", "mlflow": "service_healthy",
                                    "postgres": "service_healthy"}
    assert conditions["beat"] == {"redis": "service_healthy", "postgres": "service_healthy"}
    # each IncomeOps service runs an entrypoint role or a command of the environment
    for name, service in services.items():
        if "build" in service:
            role = service["command"][0]
            assert role in ENTRYPOINT_ROLES or (BIN / role).exists(), f"{name}: unknown command {role}"


def test_compose_api_is_stateless_behind_postgres_and_mlflow(compose):
    services = compose["services"]
    api = services["api"]
    assert all(v.endswith(":ro") for v in api.get("volumes", [])), "the API keeps no state of its own (it may read shared reports)"
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


def test_compose_runs_jobs_on_workers_through_redis_with_exactly_one_beat(compose):
    services = compose["services"]
    env = {name: {k: interpolate(str(v)) for k, v in services[name]["environment"].items() if v is not None} for name in ("api", "worker", "beat")}
    assert all(k.removeprefix("INCOMEOPS_").lower() in Settings.model_fields for e in env.values() for k in e), "unknown setting"
    brokers = {name: urlsplit(e["INCOMEOPS_BROKER_URL"]) for name, e in env.items()}
    assert {(b.scheme, b.hostname, b.port) for b in brokers.values()} == {("redis", "redis", 6379)}, "one broker: the redis service"
    assert all(e["INCOMEOPS_DATABASE_URL"] == env["api"]["INCOMEOPS_DATABASE_URL"] for e in env.values()), "one service database"
    assert all(e["INCOMEOPS_TRACKING_URI"] == env["api"]["INCOMEOPS_TRACKING_URI"] for e in env.values()), "one registry"
    assert float(env["api"]["INCOMEOPS_MODEL_POLL_SECONDS"]) > 0                  # each replica follows @champion by itself
    assert [services[n]["command"][0] for n in ("worker", "beat")] == ["worker", "beat"]
    assert services["beat"]["deploy"]["replicas"] == 1, "exactly one scheduler"
    assert float(env["beat"]["INCOMEOPS_MONITOR_INTERVAL_MINUTES"]) > 0 and "INCOMEOPS_MONITOR_INTERVAL_MINUTES" not in env["api"]
    assert "ports" not in services["worker"] and "ports" not in services["beat"]
    assert "redis" not in services["api"].get("depends_on", {}), "the API starts and predicts without the broker"
    redis = services["redis"]
    assert redis["image"].startswith("redis:") and "redis-cli" in redis["healthcheck"]["test"]
    assert "--appendonly" in redis["command"] and any(v.split(":")[0] in compose["volumes"] for v in redis["volumes"]), "queued jobs survive a restart"
    # the workers write reports where the API reads the drift report
    reports = {name: next(v.split(":")[0] for v in services[name]["volumes"] if v.split(":")[1] == "/app/reports") for name in ("worker", "api")}
    assert reports["worker"] == reports["api"] and reports["worker"] in compose["volumes"]
    assert int(services["worker"]["stop_grace_period"].removesuffix("s")) >= 10


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
    # the workflow gets PostgreSQL and Redis from a service container and apt-get instead of `make system-deps`
    assert work_done(make_targets(ci_run)) - {"system-deps"} == work_done(make_targets(workflow))
    assert "system-deps" in make_targets(ci_run)
    exported = dict(re.findall(r"^export (INCOMEOPS_TEST_\w+)=(\S+)", ci_run, re.M))
    env = yaml.safe_load((REPO / ".github" / "workflows" / "ci.yml").read_text())["jobs"]["test"]["env"]
    assert exported and exported == {k: v for k, v in env.items() if k.startswith("INCOMEOPS_TEST_")}
    assert exported == LOCAL_TEST_POSTGRES, "the tests' local default is the database .ci/run and CI use"


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
def on_host(value: str, workdir: Path, app: Path) -> str:
    """An image path in `value` as its place here: /app/.venv is the final tree's environment in both stages (an environment
    cannot move, and `COPY --from=builder /app/.venv /app/.venv` keeps its path), any other /app is the stage's own folder."""
    value = re.sub(r"(?<![\w.-])/app/\.venv(?=[/:]|$)", str(app / ".venv"), value)
    return re.sub(r"(?<![\w.-])/app(?=[/:]|$)", str(workdir), value)


def copy_from_context(stage, workdir: Path, context: set[str]) -> None:
    "The stage's COPY instructions from the build context into `workdir`, by Docker's rules (a folder's content goes into dest)."
    for sources, dest, flags in context_copies(stage):
        folder = workdir / dest.removeprefix("/app/").removeprefix("./")
        mode = next((int(f.partition("=")[2], 8) for f in flags if f.startswith("--chmod=")), None)
        for source in (s.rstrip("/") for s in sources):
            for path in sorted(p for p in context if (p == source or p.startswith(source + "/")) and (REPO / p).is_file()):
                inside = Path(path).relative_to(source) if (REPO / source).is_dir() else Path(Path(path).name)
                target = folder / inside if (REPO / source).is_dir() or dest.endswith("/") or len(sources) > 1 else folder
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(REPO / path, target)
                if mode is not None: target.chmod(mode)


@pytest.fixture(scope="module")
def image_tree(tmp_path_factory) -> Path:
    """The image's /app, built without Docker: the builder stage replayed from the build context, each of its RUN commands
    run by `sh -c` as Docker runs it, on a stand-in for python:3.11-slim (a fresh environment with pip); then the final
    stage's files beside the environment. The final stage's RUN commands (a system user, folder owners) need root and
    change the machine: they are not run."""
    root = tmp_path_factory.mktemp("image")
    build, app, base = root / "build", root / "app", root / "base"
    stages, context = dockerfile_stages(), build_context()
    builder, final = stages[0], stages[-1]
    subprocess.run([str(UV), "venv", "--quiet", "--seed", "--python", sys.executable, str(base)], check=True, timeout=120)
    # Two settings of the builder only shape the image's layers and are left out: UV_LINK_MODE=copy (its cache is a mount
    # on another file system; here uv hard-links from its cache) and UV_COMPILE_BYTECODE=1 (about 90 s here, for a faster
    # first start of the container). Neither changes what gets installed.
    host = {k: v for k, v in os.environ.items() if not k.startswith(("UV_", "VIRTUAL_ENV", "PIP_", "PYTHON"))}
    env = {k: on_host(v, build, app) for k, v in stage_env(builder).items() if k not in ("UV_LINK_MODE", "UV_COMPILE_BYTECODE")}
    env = {**host, **env, "PATH": f"{base / 'bin'}:{host['PATH']}"}
    started, workdir = time.perf_counter(), root                 # the folder a RUN starts in: / until a WORKDIR
    for c in builder:
        if c.cmd == "WORKDIR":
            assert c.value == ("/app",), "the test knows one work folder, /app"
            workdir = build
            build.mkdir(exist_ok=True)
        if c.cmd == "COPY": copy_from_context([c], build, context)
        if c.cmd == "RUN":
            command = list(c.value) if c.json else ["/bin/sh", "-c", c.value[0]]
            res = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True, timeout=300)
            assert res.returncode == 0, f"{c.original}:\n{res.stdout[-2000:]}\n{res.stderr[-3000:]}"
    print(f"\nthe builder stage, replayed: {time.perf_counter() - started:.1f} s")
    assert values(final, "WORKDIR") == [("/app",)]
    copy_from_context(final, app, context)
    return app


def image_env(app: Path) -> dict[str, str]:
    "The final stage's ENV, with this machine's PATH as the base image's."
    host_path = os.environ["PATH"]
    return {k: on_host(v, app, app) for k, v in stage_env(dockerfile_stages()[-1], {"PATH": host_path}).items()}


def locked_versions() -> dict[str, str]:
    "Each package of uv.lock with its version (names normalised as in PEP 503)."
    lock = tomllib.loads((REPO / "uv.lock").read_text())
    return {re.sub(r"[-_.]+", "-", p["name"]).lower(): p["version"] for p in lock["package"] if "version" in p}


def test_clean_environment_has_the_locked_runtime_and_not_the_dev_tools(image_tree):
    python = image_tree / ".venv" / "bin" / "python"
    kernel = json.loads((REPO / "nbs" / "pipelines" / "train.ipynb").read_text())["metadata"]["kernelspec"]["name"]
    probe = ("import importlib.util as u, importlib.metadata as m, json, incomeops, sys; from jupyter_client.kernelspec import KernelSpecManager as K; "
             f"spec = K().get_kernel_spec({kernel!r}); "
             "print(json.dumps({'dev': [m for m in ('pytest', 'nbdev', 'ruff', 'ydata_profiling', 'jupyterlab', 'playwright') if u.find_spec(m)], "
             "'runtime': [m for m in ('uvicorn', 'streamlit', 'papermill', 'mlflow', 'onnxruntime', 'psycopg') if not u.find_spec(m)], "
             "'installed': {d.metadata['Name']: d.version for d in m.distributions()}, "
             "'library': incomeops.__file__, 'kernel_dir': spec.resource_dir, 'kernel_argv0': spec.argv[0], 'prefix': sys.prefix}))")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    res = run(python, "-c", probe, cwd=image_tree, env={**env, "JUPYTER_DATA_DIR": str(image_tree / "no-user-kernels")})
    assert res.returncode == 0, res.stderr
    found = json.loads(res.stdout)
    assert found["dev"] == [] and found["runtime"] == []
    locked = locked_versions()
    installed = {re.sub(r"[-_.]+", "-", name).lower(): v for name, v in found["installed"].items()}
    assert {n: (v, locked.get(n)) for n, v in installed.items() if n != "incomeops" and locked.get(n) != v} == {}, "not what uv.lock says"
    assert found["library"].startswith(found["prefix"]), "the library is installed in the environment, not linked to sources"
    # Papermill's kernel for the training notebook is the environment's own python
    assert found["kernel_dir"].startswith(found["prefix"]) and found["kernel_argv0"] in ("python", str(python))


class Entrypoint:
    "deploy/entrypoint.sh of the image tree, in the image's environment (the final stage's ENV) with a project's settings."
    def __init__(self, app: Path, settings: Settings, **env):
        self.script = app / "deploy" / "entrypoint.sh"
        base = {k: v for k, v in os.environ.items() if not k.startswith(("INCOMEOPS_", "VIRTUAL_ENV", "PYTHON"))}
        self.env = {**base, **image_env(app), **settings.as_env(), "OMP_NUM_THREADS": "1", **env}

    def run(self, *args: str, timeout: float = 400) -> subprocess.CompletedProcess:
        return subprocess.run([str(self.script), *args], env=self.env, capture_output=True, text=True, timeout=timeout, cwd="/")

    def server(self, role: str, port: int, log: Path, ready_path: str | None) -> Server:
        "The entrypoint starting `role` on `port` (the container's main process), as a harness server; not started yet."
        return Server(f"the image's {role}", [self.script, role], f"http://127.0.0.1:{port}", log, env=self.env, cwd="/",
                      ready_path=ready_path, ready_timeout=400)


@pytest.fixture(scope="module")
def image_champion(tmp_path_factory, mirror):
    "A project of its own whose champion is version 1 (its registry is this module's alone)."
    from api_support import new_champion_project
    return new_champion_project(tmp_path_factory.mktemp("image-served"), mirror)


def test_image_entrypoint_serves_the_champion_from_the_clean_environment(image_tree, image_champion, tmp_path):
    settings, pipeline = image_champion
    port = free_port()
    entry = Entrypoint(image_tree, settings, HOST="127.0.0.1", PORT=str(port))
    started = time.monotonic()
    with entry.server("api", port, tmp_path / "api.log", ready_path="/ready") as api:
        print(f"\nAPI ready from the clean environment after {time.monotonic() - started:.1f} s (first start: no bytecode yet)")
        with httpx.Client(base_url=api.url, timeout=30) as http:
            assert http.get("/health").json()["status"] == "ok"
            assert http.get("/ready").json() == {"ready": True, "model_version": "1"}
            answer = http.post("/predict", json=EXAMPLE_PERSON)
            assert answer.status_code == 200, answer.text
            expected = pipeline.predict_proba(pd.DataFrame([{c: EXAMPLE_PERSON[c] for c in MODEL_INPUTS}]))[0, 1]
            assert answer.json()["probability"] == pytest.approx(expected, abs=1e-6)
            assert answer.json()["model_version"] == "1"
        # the image's health check finds the server from its command line (the entrypoint exec'd uvicorn: same pid)
        python = image_tree / ".venv" / "bin" / "python"
        check = run(python, image_tree / "deploy" / "healthcheck.py", "--pid", api.proc.pid)
        assert check.returncode == 0, check.stderr
        # a stop signal to the container's main process reaches the server itself, which drains and exits cleanly
        api.proc.send_signal(signal.SIGTERM)
        assert api.proc.wait(30) in (0, -signal.SIGTERM) and "Application shutdown complete" in api.log_tail(), api.log_tail()
        assert run(python, image_tree / "deploy" / "healthcheck.py", f"{api.url}/health").returncode == 1


def test_image_entrypoint_runs_the_form_with_its_health_check(image_tree, image_champion, tmp_path):
    port = free_port()
    entry = Entrypoint(image_tree, image_champion[0], HOST="127.0.0.1", PORT=str(port), INCOMEOPS_API_URL="http://127.0.0.1:9")
    python = image_tree / ".venv" / "bin" / "python"
    with entry.server("ui", port, tmp_path / "ui.log", ready_path=None) as ui:
        def healthy():
            ui.check_running()
            return run(python, image_tree / "deploy" / "healthcheck.py", "--pid", ui.proc.pid).returncode == 0
        wait_until(healthy, 90, "the form's health check passing", interval=0.5)
        assert httpx.get(f"{ui.url}/_stcore/health", timeout=5).text == "ok"


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
