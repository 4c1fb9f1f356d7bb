import sys
import time


class Progress:
    """A one-line progress bar on stderr (only when stderr is a terminal, unless forced)."""

    def __init__(self, total, label="", enabled=None, stream=None, width=30):
        self.total, self.label, self.width = max(1, total), label, width
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.n = 0
        self.t0 = time.perf_counter()

    def update(self, n=1, note=""):
        self.n += n
        if not self.enabled:
            return
        frac = min(1.0, self.n / self.total)
        fill = int(frac * self.width)
        el = time.perf_counter() - self.t0
        line = f"\r{self.label} [{'#' * fill}{'.' * (self.width - fill)}] {self.n}/{self.total} {el:5.1f}s {note}"
        self.stream.write(line[:120].ljust(120))
        self.stream.flush()

    def close(self):
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()
