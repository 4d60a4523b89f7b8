"""systemd's own checks of the units the program renders: `systemd-analyze verify` and the elapses
of a timer's OnCalendar= (`systemd-analyze calendar`), in UTC."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from harness import require_tool


def verify(*units: Path) -> subprocess.CompletedProcess[str]:
    """systemd-analyze verify on these unit files (it also checks that ExecStart= exists)."""
    require_tool("systemd-analyze", "systemd")
    return subprocess.run(
        ["systemd-analyze", "verify", *map(str, units)], capture_output=True, text=True, timeout=30
    )


def calendar_elapses(timer: str, base_time: str, iterations: int = 3) -> tuple[list[str], str]:
    """The next elapses of the timer's OnCalendar= after base_time, as systemd-analyze prints them
    (e.g. "Mon 2030-01-07 00:00:00 UTC"), with its whole output for messages."""
    require_tool("systemd-analyze", "systemd")
    (expression,) = (
        line.removeprefix("OnCalendar=") for line in timer.splitlines() if line.startswith("OnCalendar=")
    )
    shown = subprocess.run(
        ["systemd-analyze", "calendar", f"--iterations={iterations}", f"--base-time={base_time}", expression],
        env={**os.environ, "TZ": "UTC"},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    times = [
        line.split(": ", 1)[1].strip()
        for line in shown.splitlines()
        if "Next elapse:" in line or "Iter. #" in line
    ]
    return times, shown
