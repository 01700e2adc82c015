"""Running child processes until SIGTERM or SIGINT: `serve --workers` and `tracker dev`."""

import logging
import signal
import subprocess
import time

log = logging.getLogger("tracker.processes")


class StopSignal:
    """Records SIGTERM or SIGINT, so loops can end cleanly instead of being interrupted."""

    def __init__(self) -> None:
        self.received = False
        signal.signal(signal.SIGTERM, self._receive)
        signal.signal(signal.SIGINT, self._receive)

    def _receive(self, signum: int, frame: object) -> None:
        self.received = True


def run_processes(
    commands: list[list[str]],
    stop: StopSignal,
    env: dict[str, str] | None = None,
    restart: bool = False,
    stop_timeout: float = 30.0,
) -> int:
    """Run one process per command until `stop`; then SIGTERM them all and wait.

    A process that exits before then is restarted (`restart`), or ends the run.
    Returns 0 when every process exited with 0.
    """
    children = [subprocess.Popen(command, env=env) for command in commands]
    try:
        while not stop.received:
            for i, child in enumerate(children):
                if child.poll() is None:
                    continue
                log.error("process %d exited with %s", child.pid, child.returncode)
                if not restart:
                    return 1
                time.sleep(0.5)
                children[i] = subprocess.Popen(commands[i], env=env)
            time.sleep(0.2)
    finally:
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in children:
            try:
                child.wait(timeout=stop_timeout)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
    return 0 if all(child.returncode == 0 for child in children) else 1
