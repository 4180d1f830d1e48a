"""Export functions for the tests to run in the export child process (model/export_process.py).

A test puts one in place of `runtime.export_runtime` (or `export_from_manifest`); the process
exporting passes its module and name to the child, which imports it from here. Each changes
`model.runtime` in the child only: never call them in the test process itself."""
from __future__ import annotations

import time

from model import runtime

_export_runtime = runtime.export_runtime
_export_from_manifest = runtime.export_from_manifest
FP32_CHOICE = {"dtype": "fp32", "reason": "forced", "ms_per_image": {}}
HANG_S = 600.0


def _pytorch_is_slow() -> None:
    """A variant serves only when faster than PyTorch; on the small test network either may win."""
    runtime.pytorch_ms_per_image = lambda folder, images, precision: (float("inf"), FP32_CHOICE)


def export_with_slow_pytorch(folder, **kwargs) -> dict:
    _pytorch_is_slow()
    return _export_runtime(folder, **kwargs)


def export_from_manifest_with_slow_pytorch(folder, **kwargs) -> dict:
    _pytorch_is_slow()
    return _export_from_manifest(folder, **kwargs)


def failing_export(folder, **kwargs) -> dict:
    raise RuntimeError("exporter exploded")


def export_until_killed(folder, **kwargs) -> dict:
    """Writes the first variant's files into the export's work folder, then hangs (until killed)."""
    def hang(xml):
        (xml.parent / "hanging").touch()
        time.sleep(HANG_S)
        raise RuntimeError("nobody killed the export")
    runtime._compile = hang
    return export_with_slow_pytorch(folder, **kwargs)


def export_nothing(folder, **kwargs) -> dict:
    return {}
