#!/usr/bin/env bash
# Run the whole test suite: starts a throwaway PostgreSQL (tools/pg.sh) so the
# store tests run on SQLite and PostgreSQL, and lets the Kubernetes tests build
# or reuse kube-apiserver (tools/kube/build.sh, cached under ~/.cache).
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
set +e
"$PY" -m pytest -p no:cacheprovider -ra "$@"
rc=$?
set -e
if [ "$rc" = 5 ]; then
  echo "pytest collected no tests: that is a failure here" >&2
  exit 1
fi
exit "$rc"
