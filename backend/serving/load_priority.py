"""While a serving process loads a model version, its new predictions wait for the load.

A load (the weights' hash, the network, the bf16 weights) shares the CPU and the GIL with every
request thread: with 16 clients on 2 cores it took 2 to 4 times as long as on a quiet server, and
the old version answered all that while. A prediction that starts while a load runs waits until
no load runs (at most `max_wait_s`: a slow load never stalls requests for longer), then takes the
model that is current by then: the load gets the CPU, and the requests that waited answer from
the new version. Predictions already running go on; they are short next to a load.
"""
from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

# the longest a prediction waits for loads: a resnet18 loads in about a second, a vgg16 in several
MAX_WAIT_S = 3.0


class LoadPriority:
    def __init__(self, max_wait_s: float = MAX_WAIT_S):
        self.max_wait_s = max_wait_s
        self._loads = 0
        self.waiting = 0  # predictions waiting now
        self._idle = threading.Condition()

    @contextmanager
    def loading(self) -> Iterator[None]:
        """Held around a load: predictions starting meanwhile wait for it."""
        with self._idle:
            self._loads += 1
        try:
            yield
        finally:
            with self._idle:
                self._loads -= 1
                if not self._loads:
                    self._idle.notify_all()

    def wait_for_loads(self) -> bool:
        """Block while a load runs, at most `max_wait_s`; False when the wait ran out."""
        with self._idle:
            if not self._loads:
                return True
            self.waiting += 1
            try:
                return self._idle.wait_for(lambda: not self._loads, timeout=self.max_wait_s)
            finally:
                self.waiting -= 1
