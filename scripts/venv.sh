# Sourced by setup.sh and test: picks the interpreter ($PYTHON, default python3.11) and its virtualenv.
# Python 3.11 gets .venv with everything; another version (3.12, 3.13) gets .venv-<version> without
# torch and torchvision (PyPI's wheels for those are gigabytes of CUDA; only 3.11's are on local disk),
# where the tests marked `torch` are not collected (tests/conftest.py).
if [ -n "${PYTHON:-}" ]; then
    python="$PYTHON"
    command -v "$python" >/dev/null 2>&1 || { echo "no interpreter $python (PYTHON)" >&2; exit 1; }
else
    python=python3.11
    command -v "$python" >/dev/null 2>&1 || python=python3
fi
python_version="$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
if [ "$python_version" = 3.11 ]; then
    venv="$root/.venv"
    with_torch=1
else
    venv="$root/.venv-$python_version"
    with_torch=0
fi
