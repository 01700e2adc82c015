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


RESTART_BACKOFF_MAX = 10.0
# A process that ran this long before exiting is restarted at once, not after a backoff.
HEALTHY_AFTER_SECONDS = 30.0


def restart_delay(failures: int) -> float:
    """Seconds before restarting a process that has exited `failures` times in a row."""
    return float(min(0.5 * 2 ** (failures - 1), RESTART_BACKOFF_MAX))


def run_processes(
    commands: list[list[str]],
    stop: StopSignal,
    env: dict[str, str] | None = None,
    restart: bool = False,
    stop_timeout: float = 30.0,
) -> int:
    """Run one process per command until `stop`; then SIGTERM them all and wait.

    A process that exits before then is restarted (`restart`), or ends the run.
    A process that keeps crashing is restarted after an exponential backoff (at
    most 10 s), reset once it has stayed up a while. Returns 0 when every process
    exited with 0.
    """
    children: list[subprocess.Popen[bytes] | None] = [
        subprocess.Popen(command, env=env) for command in commands
    ]
    started = [time.monotonic()] * len(commands)
    failures = [0] * len(commands)
    restart_at = [0.0] * len(commands)
    try:
        while not stop.received:
            now = time.monotonic()
            for i, child in enumerate(children):
                if child is None:
                    if now >= restart_at[i]:
                        children[i] = subprocess.Popen(commands[i], env=env)
                        started[i] = now
                    continue
                if child.poll() is None:
                    continue
                if not restart:
                    return 1
                failures[i] = 1 if now - started[i] > HEALTHY_AFTER_SECONDS else failures[i] + 1
                delay = restart_delay(failures[i])
                log.error(
                    "process %d exited with %s; restarting in %.1f s",
                    child.pid,
                    child.returncode,
                    delay,
                )
                children[i] = None
                restart_at[i] = now + delay
            time.sleep(0.1)
    finally:
        running = [child for child in children if child is not None]
        for child in running:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in running:
            try:
                child.wait(timeout=stop_timeout)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
    return 0 if all(child.returncode == 0 for child in running) else 1
