"""A stand-in for model/precision.py's timings, shared by the Predictor's and training's tests
(the `fresh_measurements` fixture beside it is in conftest.py)."""


class FakeTimings:
    """Stands in for timing both dtypes: fixed ms per image, and how often it was asked."""

    def __init__(self, fp32: float, bf16: float):
        self.timings, self.calls = {"fp32": fp32, "bf16": bf16}, 0

    def __call__(self, *args, **kwargs) -> dict[str, float]:
        self.calls += 1
        return dict(self.timings)
