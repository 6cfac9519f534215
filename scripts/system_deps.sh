#!/usr/bin/env bash
# System packages and services the test suite needs beyond Python (Debian/Ubuntu; as root, or with sudo):
# - Debian's Chromium, for the browser test (tests/test_browser.py);
# - a PostgreSQL server on 127.0.0.1:5432 with a user and two databases, for the PostgreSQL integration tests
#   (tests/test_postgres.py): the service database and an MLflow backend store, as the compose stack uses them;
# - Debian's Redis, the broker of the Celery tests (tests/test_queue.py): they start their own redis-server processes
#   on free loopback ports (one test stops and restarts it), so no system-wide server is left running for them.
# Run by `make system-deps` (and so by .ci/run). Without it, `make test` skips those tests and says so at its end.
# The tests find the databases below by themselves (tests/conftest.py); it prints the variables that point them elsewhere.
set -euo pipefail
PG_USER=incomeops PG_PASSWORD=incomeops-test SERVICE_DB=incomeops_test MLFLOW_DB=incomeops_mlflow_test
SUDO=$([ "$(id -u)" = 0 ] && echo "" || echo sudo)
packages=()
command -v chromium >/dev/null || packages+=(chromium)
command -v pg_ctlcluster >/dev/null || packages+=(postgresql)
command -v redis-server >/dev/null || packages+=(redis-server)
if ((${#packages[@]})); then
    echo "installing system packages: ${packages[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
fi
chromium --version
redis-server --version

# PostgreSQL: start the cluster the package created (no systemd here), then the test user and databases.
read -r pg_version pg_cluster _ < <(pg_lsclusters --no-header | head -1)
$SUDO pg_ctlcluster "$pg_version" "$pg_cluster" start 2>/dev/null || true
for _ in $(seq 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done
pg_isready -h 127.0.0.1 -p 5432
psql_as_postgres() { $SUDO su postgres -c "psql -v ON_ERROR_STOP=1 -qtAc \"$1\""; }
[ "$(psql_as_postgres "SELECT 1 FROM pg_roles WHERE rolname = '$PG_USER'")" = 1 ] || psql_as_postgres "CREATE USER $PG_USER"
psql_as_postgres "ALTER USER $PG_USER WITH PASSWORD '$PG_PASSWORD'"
for db in "$SERVICE_DB" "$MLFLOW_DB"; do
    [ "$(psql_as_postgres "SELECT 1 FROM pg_database WHERE datname = '$db'")" = 1 ] ||
        psql_as_postgres "CREATE DATABASE $db OWNER $PG_USER"
done
echo "PostgreSQL $pg_version ready on 127.0.0.1:5432"
base="postgresql://$PG_USER:$PG_PASSWORD@127.0.0.1:5432"
cat <<EOF

The browser, PostgreSQL and Celery/Redis tests can run now: \`make test\` (or .venv/bin/pytest) finds these
databases by itself. The PostgreSQL tests read these variables (set, they win; set to nothing, the tests are skipped):
  export INCOMEOPS_TEST_POSTGRES_URL=$base/$SERVICE_DB
  export INCOMEOPS_TEST_MLFLOW_POSTGRES_URL=$base/$MLFLOW_DB
EOF
