"""The front's side of its commit helper (server/commit_process.py), on its
event loop: an asyncio protocol on the socket pair. Apart from the helper's
module, which never loads asyncio (5 MB of the helper's memory)."""

from __future__ import annotations

import asyncio
import logging
import marshal
import os
from pathlib import Path

from postvakt.queue import spool
from postvakt.queue.spool import IncomingMessage, QueueWriteError, Sealable
from postvakt.server.commit_process import STOP_WAIT, CommitHelper, batch_frame, take_frame

log = logging.getLogger("postvakt.queue")

# The most messages in one batch (one frame).
MAX_BATCH = 256
# How long a front waits before it starts a helper again after a failed start.
RESTART_DELAY = 1.0


Waiting = tuple[IncomingMessage, Sealable, "asyncio.Future[QueueWriteError | None]"]


class HelperClient(asyncio.Protocol):
    """The front's side of its commit helper, on its event loop: `commit` a
    message (the future's result: None, or the error for a 451), `close` at
    the end."""

    def __init__(self, root: Path | str) -> None:
        self.helper = CommitHelper(root)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._transport: asyncio.Transport | None = None
        self._waiting: list[Waiting] = []  # not yet sent
        self._batch: list[Waiting] | None = None  # sent, not yet answered
        self._buf = bytearray()
        self._flush_due = False
        self._starting = False
        self._closing = False
        self._started_at = 0.0

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._starting = True
        self._started_at = self._loop.time()
        try:
            sock = self.helper.start()
            await self._loop.create_connection(lambda: self, sock=sock)
        finally:
            self._starting = False

    def commit(
        self, msg: IncomingMessage, envelope: Sealable
    ) -> asyncio.Future[QueueWriteError | None]:
        assert self._loop is not None
        done: asyncio.Future[QueueWriteError | None] = self._loop.create_future()
        if self._closing:
            done.set_result(QueueWriteError("the server is stopping"))
            return done
        self._waiting.append((msg, envelope, done))
        if self._transport is None:
            if not self._starting:
                self._loop.create_task(self._restart(None))
        elif self._batch is None and not self._flush_due:
            # The rest of this turn of the loop joins the batch.
            self._flush_due = True
            self._loop.call_soon(self._flush)
        return done

    def _flush(self) -> None:
        self._flush_due = False
        if self._batch is not None or not self._waiting or self._transport is None:
            return
        batch = self._waiting[:MAX_BATCH]
        del self._waiting[:MAX_BATCH]
        self._batch = batch
        self._transport.write(batch_frame((msg, env) for msg, env, _ in batch))

    # ------------------------------------------------------------ asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self._buf.clear()
        self._flush()  # what waited for this helper

    def data_received(self, data: bytes) -> None:
        self._buf += data
        while (frame := take_frame(self._buf)) is not None:
            self._answered(frame)

    def _answered(self, frame: bytes) -> None:
        batch = self._batch
        try:
            replies = marshal.loads(frame)
        except (ValueError, EOFError, TypeError):
            replies = None
        if batch is None or not isinstance(replies, list) or len(replies) != len(batch):
            log.error("commit helper answered out of turn; it is stopped")
            if self._transport is not None:
                self._transport.abort()  # connection_lost undoes the batch
            return
        self._batch = None
        for (msg, _, done), reply in zip(batch, replies, strict=True):
            msg.settled()  # committed, or undone by the helper
            if not done.done():
                done.set_result(None if reply is None else QueueWriteError(str(reply)))
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        if self._closing:
            return
        if spool.CRASH_AT:
            os._exit(137)  # crash tests: the server dies where its helper did
        batch, self._batch = self._batch, None
        log.error(
            "commit helper exited%s; another starts",
            f" in a batch of {len(batch)}, which gets 451s" if batch else "",
        )
        assert self._loop is not None
        self._loop.create_task(self._restart(batch))

    async def _restart(self, batch: list[Waiting] | None) -> None:
        """The helper is gone: undo its batch (off the loop), start another."""
        self._starting = True
        try:
            await asyncio.to_thread(self.helper.stop, kill=True)
            if batch:
                error = QueueWriteError("the commit helper exited in the middle of a batch")
                errors = await asyncio.to_thread(
                    lambda: [msg.undone(env, error) for msg, env, _ in batch]
                )
                for (_, _, done), err in zip(batch, errors, strict=True):
                    if not done.done():
                        done.set_result(err)
            assert self._loop is not None
            if self._loop.time() - self._started_at < RESTART_DELAY:
                # One that dies at once is not restarted in a loop.
                await asyncio.sleep(RESTART_DELAY)
            while not self._closing:
                try:
                    await self.start()
                    return
                except OSError as e:
                    log.error("commit helper cannot start: %s", e)
                    self._fail_waiting(QueueWriteError(f"commit helper cannot start: {e}"))
                    await asyncio.sleep(RESTART_DELAY)
        finally:
            self._starting = False

    def _fail_waiting(self, error: QueueWriteError) -> None:
        waiting, self._waiting = self._waiting, []
        for _, _, done in waiting:  # each session aborts its message on the error
            if not done.done():
                done.set_result(error)

    async def close(self) -> None:
        """Commit what was handed over, then end the helper (end of file)."""
        assert self._loop is not None
        deadline = self._loop.time() + STOP_WAIT
        while (self._waiting or self._batch) and self._transport is not None:
            if self._loop.time() > deadline:
                break
            await asyncio.sleep(0.01)
        self._closing = True
        self._fail_waiting(QueueWriteError("the server is stopping"))
        if self._transport is not None:
            self._transport.close()
        await asyncio.to_thread(self.helper.stop, kill=False)
