"""A local file of clicks that could not reach Redis, kept until they can be replayed.

Each web process appends to files of its own (`clicks-<host>-<pid>-<start ms>-<n>.jsonl`
under `spool_dir`), one JSON line per click, fsynced once per batch before any of
the batch's visitors is redirected. The process holds an exclusive `flock` on
every file it writes or replays, so a file whose lock can be taken belongs to a
process that is gone: the next process to start replays it. Replaying is
idempotent (Redis SET of the same record, and the sink stores a click id once),
so a file replayed twice after a crash costs nothing but work.
"""

import asyncio
import contextlib
import fcntl
import logging
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson

from tracker.store.batching import BatchedService, Batcher

log = logging.getLogger("tracker.spool")

FILE_PREFIX = "clicks-"
FILE_SUFFIX = ".jsonl"
_RECORD_MARK = b',"r":'
READ_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class SpooledClick:
    click_id: str
    expires_at: int  # Unix seconds at which the Redis record would have expired
    record: bytes
    # The visitor's unique-click key and window, when the replay is to decide it.
    unique_key: str | None = None
    unique_ttl: int = 0
    # Written to Redis already, spooled because too few replicas confirmed it in time:
    # the replay writes it again only if a failover lost it.
    written: bool = False

    def remaining_ttl(self, now: float) -> int:
        return max(0, int(self.expires_at - now))


def encode_click(
    click_id: str,
    record: bytes,
    ttl_seconds: int,
    now: float,
    unique_key: str | None = None,
    unique_ttl: int = 0,
    written: bool = False,
) -> bytes:
    """One spool line; the record's JSON bytes are kept exactly as they were."""
    expires_at = int(now) + ttl_seconds
    unique = b""
    if unique_key is not None and unique_ttl > 0:
        unique = b',"u":%s,"ut":%d' % (orjson.dumps(unique_key), unique_ttl)
    if written:
        unique += b',"w":1'
    return b'{"id":"%s","exp":%d%s,"r":%s}\n' % (click_id.encode(), expires_at, unique, record)


def decode_line(line: bytes) -> SpooledClick | None:
    """The click on one line, or None for a line that is not whole (a crash mid-write)."""
    line = line.rstrip(b"\n")
    try:
        parsed = orjson.loads(line)
        start = line.index(_RECORD_MARK) + len(_RECORD_MARK)
        unique_key = parsed.get("u")
        return SpooledClick(
            str(parsed["id"]),
            int(parsed["exp"]),
            line[start:-1],
            str(unique_key) if unique_key is not None else None,
            int(parsed.get("ut", 0)),
            bool(parsed.get("w", 0)),
        )
    except (orjson.JSONDecodeError, KeyError, ValueError, TypeError):
        return None


@dataclass(slots=True)
class SpoolFile:
    """An open, locked spool file."""

    path: Path
    fd: int
    size: int = 0


def _lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def read_clicks(spool_file: SpoolFile, chunk: int = READ_CHUNK) -> Iterator[list[SpooledClick]]:
    """The file's clicks in order, a list per chunk read; broken lines are skipped."""
    offset = 0
    rest = b""
    while True:
        data = os.pread(spool_file.fd, chunk, offset)
        offset += len(data)
        if not data:
            if rest:
                log.warning("%s: skipped an incomplete last line", spool_file.path.name)
            return
        data = rest + data
        end = data.rfind(b"\n")
        if end < 0:
            rest = data
            continue
        rest = data[end + 1 :]
        clicks = []
        for line in data[: end + 1].split(b"\n"):
            if not line:
                continue
            click = decode_line(line)
            if click is None:
                log.warning("%s: skipped a broken line", spool_file.path.name)
            else:
                clicks.append(click)
        yield clicks


def release(spool_file: SpoolFile, remove: bool) -> None:
    """Close the file (dropping its lock); `remove` deletes it first."""
    if remove:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(spool_file.path)
    os.close(spool_file.fd)


class ClickSpool(BatchedService):
    """Appends clicks to this process's spool file with one write and fsync per batch."""

    def __init__(self, directory: str | Path, max_batch: int = 1000, max_pending: int = 20000):
        self.directory = Path(directory)
        host = socket.gethostname().replace("/", "_")
        self._stem = f"{FILE_PREFIX}{host}-{os.getpid()}-{time.time_ns() // 1_000_000}"
        self._seq = 0
        self._current: SpoolFile | None = None
        self._lock = asyncio.Lock()
        self.batcher: Batcher[bytes, None] = Batcher(
            self._flush, max_batch, "click-spool", 1, max_pending
        )
        self.appended = 0

    @property
    def has_clicks(self) -> bool:
        return self._current is not None and self._current.size > 0

    async def append(
        self,
        click_id: str,
        record: bytes,
        ttl_seconds: int,
        unique_key: str | None = None,
        unique_ttl: int = 0,
        written: bool = False,
    ) -> None:
        """Return once the click is on disk (written and fsynced)."""
        line = encode_click(
            click_id, record, ttl_seconds, time.time(), unique_key, unique_ttl, written
        )
        await self.batcher.submit(line)

    async def _flush(self, lines: list[bytes]) -> list[BaseException | None]:
        async with self._lock:
            await asyncio.to_thread(self._write, b"".join(lines))
        self.appended += len(lines)
        return [None] * len(lines)

    def _write(self, data: bytes) -> None:
        if self._current is None:
            self._current = self._open_new()
        current = self._current
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(current.fd, view) :]
            os.fsync(current.fd)
        except OSError:
            # Cut a partial write off, so the next batch starts on a line of its own.
            with contextlib.suppress(OSError):
                os.ftruncate(current.fd, current.size)
            raise
        current.size += len(data)

    def _open_new(self) -> SpoolFile:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._seq += 1
        path = self.directory / f"{self._stem}-{self._seq}{FILE_SUFFIX}"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        if not _lock(fd):  # cannot happen: the name is ours alone
            os.close(fd)
            raise OSError(f"spool file {path} is locked by another process")
        # The directory entry must survive a power cut as well as the lines.
        dir_fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        return SpoolFile(path, fd)

    async def seal(self) -> SpoolFile | None:
        """Hand over the current file for replay; later clicks go to a new one."""
        async with self._lock:
            current = self._current
            if current is None or current.size == 0:
                return None
            self._current = None
            return current

    def claim_orphans(self) -> list[SpoolFile]:
        """Lock and return the spool files no live process holds, oldest name first."""
        claimed = []
        try:
            paths = sorted(self.directory.glob(f"{FILE_PREFIX}*{FILE_SUFFIX}"))
        except OSError:
            return []
        for path in paths:
            try:
                fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
            except OSError:
                continue  # replayed and removed meanwhile
            try:
                # Locked: its writer is alive (or it is one of ours, open elsewhere).
                if not _lock(fd) or os.stat(path).st_ino != os.fstat(fd).st_ino:
                    os.close(fd)
                    continue
            except OSError:
                os.close(fd)
                continue
            claimed.append(SpoolFile(path, fd, os.fstat(fd).st_size))
        return claimed

    async def close(self) -> None:
        """Write what is queued; the file stays for the next process if it holds clicks."""
        await self.batcher.close()
        async with self._lock:
            if self._current is not None:
                release(self._current, remove=self._current.size == 0)
                self._current = None
