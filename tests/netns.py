"""A network namespace of a test's own (`ip netns`): commands run in it, processes started in it
(killed when it goes), and its removal. Tests that need a network make one, or several joined by a
veth, so that no packet reaches any other address."""

from __future__ import annotations

import os
import signal
import subprocess
from dataclasses import dataclass, field


@dataclass
class Netns:
    name: str
    # The environment commands run with (None: this process's).
    env: dict[str, str] | None = None
    processes: list[subprocess.Popen] = field(default_factory=list)

    def run(
        self, *command: str, check: bool = True, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            ["ip", "netns", "exec", self.name, *command],
            input=input,
            capture_output=True,
            text=True,
            timeout=30,
            env=self.env,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(command)} in {self.name}: {result.stderr}")
        return result

    def start(self, *command: str) -> subprocess.Popen:
        """A process in the namespace, its stdout and stderr piped; killed by remove()."""
        process = subprocess.Popen(
            ["ip", "netns", "exec", self.name, *command],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=self.env,
        )
        self.processes.append(process)
        return process


def remove(namespace: Netns) -> None:
    """Kills what was started in the namespace, then deletes it."""
    for process in namespace.processes:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()
    subprocess.run(["ip", "netns", "delete", namespace.name], capture_output=True)
