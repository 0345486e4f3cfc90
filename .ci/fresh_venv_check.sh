#!/usr/bin/env bash
# The usage-error path from a fresh virtual environment holding only what pyproject.toml declares (no
# dev extras, nothing inherited): an undeclared import (as click once was) fails here first.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="$(mktemp -d)/venv"
python -m venv "$venv"
"$venv/bin/pip" install -q torch==2.13.0
"$venv/bin/pip" install -q .
"$venv/bin/morphreg" --version
set +e
err="$("$venv/bin/morphreg" info 2>&1 >/dev/null)"; code=$?
set -e
echo "morphreg info (no argument): exit $code: $err"
[ "$code" -eq 2 ] || { echo "expected exit 2"; exit 1; }
[ "$(printf '%s\n' "$err" | grep -c .)" -eq 1 ] || { echo "expected one line"; exit 1; }
! printf '%s' "$err" | grep -q Traceback
"$venv/bin/morphreg" demo --output "$(dirname "$venv")/demo" --dim 2 --size 32 -q > /dev/null
# Into a file first: grep -q would close the pipe early and pipefail would report morphreg's broken pipe.
"$venv/bin/morphreg" models > "$(dirname "$venv")/models.txt"
grep -q prostate-mr-trus "$(dirname "$venv")/models.txt" || { echo "the shipped model is not found in the installed package"; exit 1; }
rm -rf "$(dirname "$venv")"
echo "fresh venv check passed"
