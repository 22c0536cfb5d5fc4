#!/usr/bin/env bash
# Run the whole test suite: starts a throwaway PostgreSQL (tools/pg.sh) so the
# store tests run on SQLite and PostgreSQL, and lets the Kubernetes tests build
# or reuse kube-apiserver (tools/kube/build.sh, cached under ~/.cache).
# Measures line coverage of hub/ and edge_agent/ (coverage.py, in-process: see
# [tool.coverage.run] in pyproject.toml) and prints the report, lowest first;
# FLEET_COVERAGE=0 runs plain pytest.
#   tools/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${FLEET_VENV:-.venv}/bin/python
[ -x "$PY" ] || { echo "no virtualenv at ${FLEET_VENV:-.venv}: run the install command from README.md first" >&2; exit 2; }
if [ -z "${FLEET_TEST_PG_URL:-}" ]; then
  FLEET_TEST_PG_URL=$(tools/pg.sh start)
  export FLEET_TEST_PG_URL
  trap 'tools/pg.sh stop' EXIT
fi
cover=${FLEET_COVERAGE:-1}
if [ "$cover" != 0 ] && ! "$PY" -c "import coverage" 2>/dev/null; then
  echo "coverage.py is not installed (pip install -e '.[dev]'): running without coverage" >&2
  cover=0
fi
set +e
if [ "$cover" != 0 ]; then
  # a fresh data file each run (coverage run replaces it), so running twice reports the second run only
  log=$(mktemp)
  "$PY" -m coverage run -m pytest -p no:cacheprovider -ra "$@" 2>&1 | tee "$log"
  rc=${PIPESTATUS[0]}
  "$PY" -m coverage report || echo "coverage report failed (the test result stands)" >&2
  # pytest's summary line again, so the run still ends with it
  grep -E '^=+ .*(passed|failed|error|no tests ran).* =+$' "$log" | tail -n 1
  rm -f "$log"
else
  "$PY" -m pytest -p no:cacheprovider -ra "$@"
  rc=$?
fi
set -e
if [ "$rc" = 5 ]; then
  echo "pytest collected no tests: that is a failure here" >&2
  exit 1
fi
exit "$rc"
