"""The live progress line of fabric bench, on stderr.

Once per interval the runner calls :meth:`LiveLine.show` with one line: elapsed time,
then for each role its messages/s in the last interval and since the start, MB/s, p50
and p99 latency of the interval, and the failures so far. On a terminal the line is
rewritten in place (``\\r`` and erase-to-end-of-line) and :meth:`LiveLine.close` ends it
with a newline; elsewhere (a pipe, a log file) each call writes a plain line.

:func:`format_ms` and :func:`role_status` format the figures the same way for the line
and the final table.
"""

from __future__ import annotations

import sys
from typing import TextIO

__all__ = ["LiveLine", "format_ms", "role_status"]

_ERASE = "\x1b[K"


def format_ms(us: float) -> str:
    """Microseconds as milliseconds with 3 significant-ish decimals (``0.412``, ``12.3``)."""
    ms = us / 1000
    if ms < 10:
        return f"{ms:.3f}"
    if ms < 100:
        return f"{ms:.2f}"
    if ms < 10_000:
        return f"{ms:.1f}"
    return f"{ms:.0f}"


def role_status(
    name: str,
    rate: float,
    average: float,
    mb_per_s: float,
    p50_us: float | None,
    p99_us: float | None,
) -> str:
    """``producer 61,234 msg/s (avg 58,900) 60.1 MB/s p50 0.412 p99 1.200 ms``."""
    text = f"{name} {rate:,.0f} msg/s (avg {average:,.0f}) {mb_per_s:,.1f} MB/s"
    if p50_us is not None and p99_us is not None:
        text += f" p50 {format_ms(p50_us)} p99 {format_ms(p99_us)} ms"
    return text


class LiveLine:
    """One status line on ``stream`` (default stderr), in place on a terminal.

    Args:
        stream: where to write.
        enabled: False writes nothing (``--interval 0``).
    """

    def __init__(self, stream: TextIO | None = None, *, enabled: bool = True) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        try:
            self.tty = self.stream.isatty()
        except (AttributeError, ValueError):
            self.tty = False
        self._open = False

    def show(self, elapsed: float, parts: list[str], failures: int) -> None:
        """Write the line: ``[  3.0s] part | part | failures N``."""
        if not self.enabled:
            return
        line = f"[{elapsed:6.1f}s] " + " | ".join([*parts, f"failures {failures:,}"])
        try:
            if self.tty:
                self.stream.write("\r" + line + _ERASE)
                self._open = True
            else:
                self.stream.write(line + "\n")
            self.stream.flush()
        except (OSError, ValueError):
            self.enabled = False  # stderr went away: keep benchmarking, stop reporting

    def note(self, text: str) -> None:
        """A message of its own on stderr (ends an in-place line first)."""
        self.close()
        try:
            self.stream.write(f"fabric bench: {text}\n")
            self.stream.flush()
        except (OSError, ValueError):
            pass

    def close(self) -> None:
        """End an in-place line with a newline."""
        if self._open:
            self._open = False
            try:
                self.stream.write("\n")
                self.stream.flush()
            except (OSError, ValueError):
                pass
