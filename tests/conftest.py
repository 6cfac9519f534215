"""Shared fixtures (the data mirror, throwaway project folders, a real HTTP server on loopback), the local test PostgreSQL,
and a closing word on the tests skipped for a missing system component."""
import http.server
import os
import threading
import zipfile
from functools import partial
from pathlib import Path

import pytest

from incomeops.config import Settings, find_project_root
from incomeops.harness import free_port  # noqa: F401  (the tests take it from here)

REPO = find_project_root(Path(__file__).parent)
DATA_FILES = ("adult.data", "adult.test", "adult.names")
pytest_plugins = ["pytester"]

# The databases `make system-deps` (scripts/system_deps.sh) creates; the PostgreSQL tests use them when the variables are
# not set and the server answers. A variable set, even to nothing, wins: `INCOMEOPS_TEST_POSTGRES_URL= pytest` skips them.
LOCAL_TEST_POSTGRES = {
    "INCOMEOPS_TEST_POSTGRES_URL": "postgresql://incomeops:incomeops-test@127.0.0.1:5432/incomeops_test",
    "INCOMEOPS_TEST_MLFLOW_POSTGRES_URL": "postgresql://incomeops:incomeops-test@127.0.0.1:5432/incomeops_mlflow_test"}
INSTALLS_THEM = "make system-deps"
# Tests skipped because a program or server is missing, told apart by what their skip reason names: (group, words).
SYSTEM_GROUPS = (("browser tests (Chromium)", ("chromium",)),
                 ("PostgreSQL tests", ("postgres",)),
                 ("Celery/Redis tests (redis-server)", ("redis",)))


def database_answers(url: str) -> bool:
    "Whether the PostgreSQL database at `url` accepts a connection within two seconds."
    import psycopg
    try:
        with psycopg.connect(url, connect_timeout=2): return True
    except psycopg.Error: return False


def pytest_configure(config):
    "Point the PostgreSQL tests at the local test databases when their variables are not set and the server answers."
    for name, url in LOCAL_TEST_POSTGRES.items():
        if name not in os.environ and database_answers(url): os.environ[name] = url


def skip_reason(report) -> str:
    "The reason a skipped test (or module) gave."
    return report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)


def skipped_for_missing_components(reports) -> dict[str, int]:
    "How many skipped tests each group of SYSTEM_GROUPS has, from the skip reasons; other skips are not counted."
    counts: dict[str, int] = {}
    for report in reports:
        reason = skip_reason(report).lower()
        group = next((g for g, words in SYSTEM_GROUPS if any(w in reason for w in words)), None)
        if group: counts[group] = counts.get(group, 0) + 1
    return counts


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_terminal_summary(terminalreporter, config):
    "After pytest's own summary, just above its closing line: the groups skipped for a missing component and what installs it."
    result = yield
    counts = skipped_for_missing_components(terminalreporter.stats.get("skipped", []))
    if counts and not config.getoption("no_summary"):
        terminalreporter.section("skipped: system components missing", sep="-", yellow=True)
        for group, n in counts.items(): terminalreporter.line(f"{group}: {n} skipped")
        terminalreporter.line(f"`{INSTALLS_THEM}` installs and starts Chromium, PostgreSQL and Redis (Debian/Ubuntu, as root or "
                              "with sudo); the next `make test` runs these tests too.")
    return result


@pytest.fixture(scope="session")
def mirror() -> Path:
    """A folder with the original UCI files for the tests' throwaway projects: INCOMEOPS_DATA_MIRROR if set, else the
    project's own verified copies, fetched first by the library from wherever the settings say (`01_data`'s order)."""
    if os.environ.get("INCOMEOPS_DATA_MIRROR"):
        folder = Path(os.environ["INCOMEOPS_DATA_MIRROR"])
        if not all((folder / n).is_file() for n in DATA_FILES):
            pytest.fail(f"the data mirror {folder} (INCOMEOPS_DATA_MIRROR) lacks some of {DATA_FILES}")
        return folder
    from incomeops.data import DataSourceError, acquire
    try: files = acquire(Settings(root=REPO), DATA_FILES)
    except DataSourceError as e: pytest.fail(f"the tests need the Adult files and could not get them: {e}")
    return files[DATA_FILES[0]].parent


@pytest.fixture
def project(tmp_path) -> Path:
    "An empty project folder."
    return tmp_path / "project"


def settings_for(project: Path, **overrides) -> Settings:
    "Settings rooted at `project`, ignoring whatever the environment says about the data source."
    return Settings(root=project, data_dir=project / "data", reports_dir=project / "reports",
                    **{"data_mirror": None, **overrides})


def cache_listing(settings: Settings) -> list[str]:
    "Every file in the raw cache, hidden partial files included."
    return sorted(p.name for p in settings.raw_dir.iterdir()) if settings.raw_dir.exists() else []


def make_zip(dest: Path, files: dict[str, bytes]) -> Path:
    "A zip archive at `dest` holding `files` (name -> bytes)."
    dest.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, content in files.items(): zf.writestr(name, content)
    return dest


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args): pass


@pytest.fixture
def http_root(tmp_path):
    "A real HTTP server on loopback serving a temporary folder; yields (folder, base_url)."
    folder = tmp_path / "www"
    folder.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(_QuietHandler, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="session")
def champion_project(tmp_path_factory, mirror):
    "A throwaway project whose registry has a LightGBM champion (version 1, threshold 0.45); (settings, pipeline)."
    from api_support import new_champion_project
    return new_champion_project(tmp_path_factory.mktemp("served"), mirror)


@pytest.fixture(scope="session")
def api(champion_project):
    "The API under uvicorn on loopback, serving `champion_project`, with an admin key; stopped at the end."
    from api_support import ADMIN_KEY, ApiServer
    # the fuzzer sends batches of 10,000 back to back, answered faster than SQLite drains them (about 55,000 rows/s): this
    # shared server's backlog holds what it sends; the bound itself is tested in test_outage.py and test_routes.py
    env = {"INCOMEOPS_API_KEY": ADMIN_KEY, "INCOMEOPS_LOG_QUEUE_ROWS": "500000"}
    with ApiServer(champion_project[0], env=env) as server: yield server
