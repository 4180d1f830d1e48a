#!/usr/bin/env bash
# Creates .venv-ls (beside .venv, at the repo root) holding a real Label Studio 1.23.2 for the
# end-to-end tests. Idempotent: does nothing when that version is already installed and importable.
# Separate from .venv on purpose: LS pins its own Django/SDK/requests stack (~1 GB, ~1 min to install).
# Usage: scripts/ls-venv.sh        (prints the venv path on stdout, progress on stderr)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${LS_VENV:-$root/.venv-ls}"
version="1.23.2"
python="${PYTHON:-python3.11}"
command -v "$python" >/dev/null 2>&1 || python=python3
stamp="$venv/.label-studio-$version-installed"

installed() {
    [ -f "$stamp" ] && [ -x "$venv/bin/label-studio" ] && \
        "$venv/bin/python" -c 'import label_studio' >/dev/null 2>&1
}

if installed; then
    echo "ls-venv: label-studio $version already in $venv" >&2
    echo "$venv"
    exit 0
fi

if [ ! -x "$venv/bin/python" ]; then
    echo "ls-venv: creating $venv" >&2
    "$python" -m venv "$venv"
fi
echo "ls-venv: installing label-studio==$version into $venv (about a minute)" >&2
start=$(date +%s)
# The machine-wide pip config lists optional local indexes that may not exist; drop pip's
# "Location ... is ignored" warnings about them so real errors stay readable.
pip_quiet() {
    "$venv/bin/python" -m pip "$@" 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; } >&2
}
pip_quiet install --quiet --upgrade pip
pip_quiet install --quiet "label-studio==$version"
"$venv/bin/python" -c 'import label_studio' >&2
[ -x "$venv/bin/label-studio" ] || { echo "ls-venv: $venv/bin/label-studio missing after install" >&2; exit 1; }
echo "$version" > "$stamp"
echo "ls-venv: done in $(( $(date +%s) - start )) s" >&2
echo "$venv"
