#!/usr/bin/env bash
# Make the PostgreSQL server binaries (initdb, pg_ctl, postgres) available for
# tests/infra/test_mlflow_postgres.py. Does nothing when they are already installed;
# otherwise installs the distribution's `postgresql` package (root, apt-based systems).
# Prints the bin directory found. CI: call it before `make test`.
# With --find: only looks, never installs; prints the bin directory or nothing (exit code 0).
set -euo pipefail

# The newest /usr/lib/postgresql/<version>/bin with the three binaries, else the directory
# of a pg_ctl on PATH; empty when there is none.
find_bindir() {
    local d found=""
    for d in /usr/lib/postgresql/*/bin; do
        if [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ] && [ -x "$d/postgres" ]; then
            found="$d"  # the glob sorts 10 before 9, but one version is the usual case
        fi
    done
    if [ -z "$found" ] && command -v pg_ctl >/dev/null 2>&1 && command -v initdb >/dev/null 2>&1; then
        found="$(dirname "$(readlink -f "$(command -v pg_ctl)")")"
    fi
    echo "$found"
}

bindir="$(find_bindir)"
if [ "${1:-}" = "--find" ]; then
    echo "$bindir"
    exit 0
fi
if [ -z "$bindir" ]; then
    if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
        echo "setup_postgres.sh: PostgreSQL server binaries missing; install the 'postgresql' package" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends postgresql >/dev/null
    bindir="$(find_bindir)"
fi
[ -n "$bindir" ] || { echo "setup_postgres.sh: install did not provide initdb/pg_ctl" >&2; exit 1; }
echo "$bindir"
