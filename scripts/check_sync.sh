#!/usr/bin/env bash
# Fail if nbdev-export, nbdev-clean or the README renderer would change any tracked source:
# the notebooks are the source and incomeops/ and README.md must be what they generate.
set -euo pipefail
cd "$(dirname "$0")/.."
snapshot() { find nbs incomeops README.md -type f -not -path '*/.ipynb_checkpoints/*' -not -name '*.pyc' | sort | xargs sha256sum; }
before=$(snapshot)
.venv/bin/nbdev-export
.venv/bin/nbdev-clean
.venv/bin/python scripts/readme.py
after=$(snapshot)
if [ "$before" != "$after" ]; then
  echo "Out of sync: nbdev-export / nbdev-clean / make readme changed these files (commit the result):"
  diff <(echo "$before") <(echo "$after") | grep '^[<>]' | awk '{print "  " $3}' | sort -u
  exit 1
fi
echo "notebooks, library and README are in sync"
