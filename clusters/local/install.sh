#!/usr/bin/env bash
# What the project needs beyond the Python packages (pyproject's `cluster` extra: SeaweedFS,
# the PostgreSQL driver, boto3), from Debian's packages: PostgreSQL's server programs
# (clusters/local) and Chromium (the tests render OUT/report.html in a headless browser).
# Run by `make setup`; does nothing where they are installed.
set -euo pipefail
missing=()
if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 && ! command -v postgres >/dev/null 2>&1; then
  # the package's own cluster (15/main) is not used: clusters/local initialises its own
  missing+=(postgresql)
fi
if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1 \
    && ! command -v google-chrome >/dev/null 2>&1; then
  missing+=(chromium)
fi
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "pgray needs Debian's ${missing[*]}: sudo apt-get install ${missing[*]}" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends "${missing[@]}"
