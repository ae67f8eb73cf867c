"""One stopwatch for every measured duration (the training clock of budgets and throughput, probe times)."""

from __future__ import annotations

import time
from collections.abc import Callable


class Stopwatch:
    """Seconds accumulated over running segments: :meth:`start` (or :meth:`resume`) to :meth:`pause`.

    Every reading of the clock first calls ``sync`` (pass ``torch.cuda.synchronize`` on CUDA), so
    queued device work counts in the segment that queued it.  ``clock`` returns seconds
    (``time.perf_counter`` by default; tests pass a fake one).  Pausing a paused watch and
    resuming a running one are no-ops, so callers need not track the state.
    """

    def __init__(self, clock: Callable[[], float] = time.perf_counter,
                 sync: Callable[[], None] | None = None) -> None:
        self.clock, self.sync = clock, sync
        self._done = 0.0  # seconds of finished segments
        self._since: float | None = None  # clock at the start of the running segment

    def now(self) -> float:
        """The clock after ``sync``."""
        if self.sync is not None:
            self.sync()
        return self.clock()

    def resume(self) -> None:
        """Start a segment (no-op while running)."""
        if self._since is None:
            self._since = self.now()

    start = resume

    def pause(self) -> None:
        """End the running segment (no-op while paused)."""
        if self._since is not None:
            self._done += self.now() - self._since
            self._since = None

    def elapsed(self) -> float:
        """Seconds so far, the running segment included."""
        return self._done + (self.now() - self._since if self._since is not None else 0.0)
