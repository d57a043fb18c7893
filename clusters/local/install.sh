#!/usr/bin/env bash
# What clusters/local needs beyond the Python packages (pyproject's `cluster` extra: SeaweedFS,
# the PostgreSQL driver, boto3): PostgreSQL's server programs, from Debian's package. Run by
# `make setup`; does nothing where they are installed.
set -euo pipefail
if ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || command -v postgres >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "clusters/local needs PostgreSQL's server: sudo apt-get install postgresql" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
# the package's own cluster (15/main) is not used: clusters/local initialises its own
apt-get install -y -q --no-install-recommends postgresql
