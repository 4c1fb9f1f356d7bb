"""Progress bars on stderr, drawn by tqdm: count, rate and time left."""
import os
import sys

from tqdm import tqdm


def _isatty(stream):
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):   # no isatty, or a closed stream
        return False


def _size(stream):
    """(columns, rows) of the terminal; (120, 24) for what it does not report (a pty nobody sized,
    a forced non-terminal), where tqdm would take -1 and draw nothing."""
    try:
        cols, rows = os.get_terminal_size(stream.fileno())
    except (AttributeError, ValueError, OSError):
        cols = rows = 0
    return (cols if cols > 0 else 120), (rows if rows > 0 else 24)


class Progress:
    """A bar over ``total`` steps: ``update(n, note)`` after each step, ``close()`` at the end.

    enabled=None draws it only when the stream (default stderr) is a terminal, so logs and pipes
    get no carriage-return noise; True or False force it on or off. The line reads
    ``label [#####     ] 3/17 [00:01<00:04, 2.95it/s], note``."""

    def __init__(self, total, label="", enabled=None, stream=None, width=30, unit="it"):
        self.stream = stream or sys.stderr
        self.enabled = _isatty(self.stream) if enabled is None else bool(enabled)
        self.total, self.label, self.n = max(1, int(total)), label, 0
        fmt = "{desc} [{bar:%d}] {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}]{postfix}" % width
        cols, rows = _size(self.stream) if self.enabled else (None, None)
        self._bar = tqdm(total=self.total, desc=label, file=self.stream, disable=not self.enabled,
                         bar_format=fmt, unit=unit, leave=True, ncols=cols, nrows=rows)

    def update(self, n=1, note=""):
        self.n += n
        if self.enabled:
            self._bar.set_postfix_str(note, refresh=False)
        self._bar.update(n)

    def close(self):
        self._bar.close()
