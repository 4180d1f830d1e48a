"""A broken install fails the suite: without an importable torch the run stops with a usage error,
unless scripts/test says the virtualenv has no torch by design."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _pytest_without_torch(tmp_path: Path, by_design: bool) -> subprocess.CompletedProcess:
    hide = tmp_path / "hide"
    hide.mkdir()
    # a None entry in sys.modules makes both `import torch` and find_spec("torch") find nothing
    (hide / "sitecustomize.py").write_text("import sys\nsys.modules['torch'] = None\n")
    env = {k: v for k, v in os.environ.items() if k != "AESEMO_TESTS_WITHOUT_TORCH"}
    env["PYTHONPATH"] = os.pathsep.join([str(hide), str(ROOT)])
    if by_design:
        env["AESEMO_TESTS_WITHOUT_TORCH"] = "1"
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_layers.py"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_a_missing_torch_fails_the_run(tmp_path):
    run = _pytest_without_torch(tmp_path, by_design=False)
    assert run.returncode != 0
    assert "torch is not importable" in run.stdout + run.stderr


def test_a_virtualenv_without_torch_by_design_runs_the_other_tests(tmp_path):
    run = _pytest_without_torch(tmp_path, by_design=True)
    assert run.returncode == 0, run.stdout + run.stderr
    assert " passed" in run.stdout
