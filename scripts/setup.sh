#!/usr/bin/env bash
# Creates .venv (PYTHON=python3.12: .venv-3.12, see scripts/venv.sh) and installs the project into
# it; safe to run again (re-installs only when pyproject.toml changed). Run by the README's two commands.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/venv.sh
. "$root/scripts/venv.sh"
if [ ! -x "$venv/bin/python" ]; then
    echo "setup: creating $venv" >&2
    "$python" -m venv "$venv"
fi
stamp="$venv/.aesemo-installed"

# pyproject.toml's dependencies and its test, demo and docs extras, less torch and torchvision
without_torch() {
    "$venv/bin/python" - "$root/pyproject.toml" <<'PY'
import re, sys, tomllib
project = tomllib.load(open(sys.argv[1], "rb"))["project"]
extras = project["optional-dependencies"]
for requirement in project["dependencies"] + extras["test"] + extras["demo"] + extras["docs"]:
    if re.split(r"[\s<>=!~\[;]", requirement, maxsplit=1)[0].lower() not in ("torch", "torchvision"):
        print(requirement)
PY
}
want="$(sha256sum "$root/pyproject.toml" | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "setup: installing aesemo and its dependencies into $venv (first time: a few minutes)" >&2
    # this machine's pip configuration lists local indexes that may be absent: drop those warnings
    # (sed, unlike grep -v, succeeds on empty input, so pipefail still reports pip's own failure)
    "$venv/bin/python" -m pip install --quiet --upgrade pip 2>&1 | sed '/is ignored: it is neither/d'
    if [ "$with_torch" = 1 ]; then
        "$venv/bin/python" -m pip install --quiet -e "$root[test,demo,docs]" 2>&1 | sed '/is ignored: it is neither/d' >&2
    else
        "$venv/bin/python" -m pip install --quiet $(without_torch) 2>&1 | sed '/is ignored: it is neither/d' >&2
        "$venv/bin/python" -m pip install --quiet --no-deps -e "$root" 2>&1 | sed '/is ignored: it is neither/d' >&2
    fi
    echo "$want" > "$stamp"
fi

# The admin page's browser test drives Debian's Chromium (Playwright's own browser download needs
# the internet). Installed here when missing and this user may install packages.
if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "setup: installing Debian's chromium for the browser test" >&2
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium; } \
        >/dev/null 2>&1 || echo "setup: could not install chromium; the browser test will report it" >&2
fi
