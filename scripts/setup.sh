#!/usr/bin/env bash
# Creates .venv and installs the project into it; safe to run again (re-installs only when
# pyproject.toml changed). Run by the README's two commands.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
python="${PYTHON:-python3.11}"
command -v "$python" >/dev/null 2>&1 || python=python3
if [ ! -x "$venv/bin/python" ]; then
    echo "setup: creating $venv" >&2
    "$python" -m venv "$venv"
fi
stamp="$venv/.aesemo-installed"
want="$(sha256sum "$root/pyproject.toml" | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "setup: installing aesemo and its dependencies into $venv (first time: a few minutes)" >&2
    # this machine's pip configuration lists local indexes that may be absent: drop those warnings
    # (sed, unlike grep -v, succeeds on empty input, so pipefail still reports pip's own failure)
    "$venv/bin/python" -m pip install --quiet --upgrade pip 2>&1 | sed '/is ignored: it is neither/d'
    "$venv/bin/python" -m pip install --quiet -e "$root[test,demo]" 2>&1 | sed '/is ignored: it is neither/d' >&2
    echo "$want" > "$stamp"
fi
