"""The queue manager: the one place that moves messages on and delivers them.

House rules:
- Only the manager delivers, and only one manager runs per queue (an flock on
  queue/manager.lock); SMTP workers only commit into incoming/.
- A message is worked on only while it sits in active/, which the manager
  enters by a rename. Every later rename may fail because the admin moved or
  deleted the message meanwhile; that is respected, never an error.
- Status is written before the message leaves active/, and a bounce is
  committed before the original is removed: after a crash, a duplicate,
  never a loss.
- File I/O runs in the default executor (`THREADS` threads, set by
  `start`); the event loop only waits on the network. A message for local
  mailboxes only is read, expanded, delivered into every Maildir and
  removed in its group's one executor job: each
  hand-off between the loop and a thread costs more than the small file work
  it carries.
- The messages one scan takes go on in a few groups (`GROUPS`, at most
  `GROUP_SIZE` each), one task and one executor job per group
  (`_prepare_each`); a single message is a group of its own at once,
  nothing waits for a group to fill. The job reads, expands and writes the
  Maildir copies of each message in turn (`_prepare`: each file fsynced
  before its link into new/), then fsyncs each new/ it linked into once,
  then settles and removes each message (`_finish_copies`): no queue file
  goes before the new/ of each of its copies is fsynced, and a copy whose
  new/ failed its fsync counts as not delivered (a temporary failure; the
  message stays, a duplicate at worst). Each message keeps its own
  fate: the job hands back each one's result or exception with its queue id,
  and what the job left (remote recipients, a notice, a recipient pending,
  a corrupt file, an error) goes on on the loop for that message alone, as
  it would have alone. Every message of a group is in `_inflight` (so the
  sweep of active/ and `stop()` see it) until its own part is done. A
  shutdown cannot stop a group's job halfway: what it delivered but did not
  remove stays in active/ and is delivered again at restart (a duplicate).
- A large message body is never held whole: it is read from the queue file
  in chunks (`delivery.source.MessageSource`) for each Maildir and each peer.
  Only a DKIM signature needs the whole message at once, once. A small queue
  file (`spool.WHOLE_READ`) is read whole, envelope and body, in one read.
- Every failure path ends in a state that is tried again: a bounce that
  cannot be queued (a full disk) keeps the message, deferred, until it can;
  when even the deferral cannot be written, the message stays in active/ and
  the sweep of active/ (every full scan, at least every SCAN_INTERVAL) takes
  it up again after `retry_initial`,
  without a restart. Anything in active/ that no delivery of this manager
  holds is such a message.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import threading
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from postvakt import metrics
from postvakt.config import Config
from postvakt.delivery import DeliveryError, maildir
from postvakt.delivery.remote import RemoteDelivery, RemoteResult
from postvakt.delivery.resolver import SMTP_PORT, Resolver
from postvakt.delivery.smtpclient import MailParams, Outcome, RcptParams, break_long_lines
from postvakt.delivery.source import MessageSource
from postvakt.directory import DirectoryUnavailable
from postvakt.dnsclient import client_for
from postvakt.queue import dsn, schedule
from postvakt.queue.envelope import DONE, FAILED, PENDING, Envelope, Status, Unit
from postvakt.queue.spool import (
    ACTIVE,
    DEFERRED,
    INCOMING,
    CorruptEntry,
    Queue,
    QueuedMessage,
    QueueWriteError,
    read_head,
    spare_worthy,
    split_head,
)
from postvakt.reply import Reply

if TYPE_CHECKING:
    from postvakt.directory import Directory
    from postvakt.mailauth.signing import Signer

log = logging.getLogger("postvakt.queue")
dlog = logging.getLogger("postvakt.delivery")

# How often the manager looks at incoming/ without a wake(), and at active/
# and deferred/ at all (a wake-up looks at incoming/ only): picks up commits
# from other worker processes, admin changes and due retries within 1 s.
SCAN_INTERVAL = 1.0
# Messages in delivery at once (Postfix qmgr_message_active_limit is 20000;
# a small server with Python threads for file I/O needs far fewer).
MAX_ACTIVE = 200
# Threads for the manager's file work: its event loop's default executor
# (`start`). Every thread more contends for the interpreter lock at each
# system call of the others: for 2,000 local messages the manager made 8-14
# futex calls a message with two threads, 30-43 with three and about 90 with
# asyncio's default of six on 2 cores, 24-31 system calls a message in all
# against about 105 (`bench/manager_syscalls.py`), for 5% more accepted
# messages a second and the same relay rate (bench/README.md).
THREADS = 2
# A scan's messages go on in this many groups when there are as many (a
# group per executor job; see the house rules): one thread delivers while the
# other waits on an fsync, with far fewer hand-offs than a job per message.
# A retry's or a notice's job waits for the one of them that ends first.
GROUPS = THREADS
# ... of at most this many messages each: a larger burst makes more groups,
# not longer ones, so no message of it waits behind more than this many.
GROUP_SIZE = 32

USER_UNKNOWN = Reply(550, "5.1.1", "Recipient address rejected: User unknown")


class QueueManagerError(Exception):
    pass


class QueueManager:
    def __init__(
        self,
        config: Config,
        directory: Directory,
        queue: Queue,
        resolver: Resolver | None = None,
        *,
        mx_port: int = SMTP_PORT,
    ) -> None:
        self.directory = directory
        self.queue = queue
        self.remote = RemoteDelivery(
            config, resolver if resolver is not None else client_for(config.dns), mx_port
        )
        self.config = config
        self._inflight: dict[str, asyncio.Task[None]] = {}
        self._next_try: dict[str, float] = {}
        # Messages an error left in active/ (not even deferrable): when to take them up again.
        self._stranded: dict[str, float] = {}
        self._stopping = False
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: asyncio.Task[None] | None = None
        self._lock_fd: int | None = None
        # The last scan left mail waiting for a free slot (MAX_ACTIVE).
        self._full = False
        # ... and it was cut short before active/ and deferred/: look there next time.
        self._resume_full = False
        self._loop_thread = 0

    @property
    def config(self) -> Config:
        return self._config

    @config.setter
    def config(self, config: Config) -> None:
        """Also what SIGHUP uses: new retry times and routes apply to the next try."""
        self._config = config
        d = config.delivery
        self.policy = schedule.RetryPolicy(d.retry_initial, d.retry_max, d.give_up, d.delay_warning)
        self.remote.config = config
        self.signer: Signer | None = None
        if config.dkim.sign:
            # Here, only with [dkim] sign: dkimpy, its ed25519 module and
            # cryptography cost the manager 4.8 MB PSS (measured).
            from postvakt.mailauth.signing import Signer

            self.signer = Signer.load(config)
            for problem in self.signer.problems:
                log.error("DKIM key not usable, its signature is left out: %s", problem)

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._wake = asyncio.Event()
        fd = os.open(self.queue.root / "manager.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise QueueManagerError(
                f"another queue manager is running on {self.queue.root}"
            ) from None
        self._lock_fd = fd
        self._loop.set_default_executor(
            ThreadPoolExecutor(THREADS, thread_name_prefix="postvakt-queue")
        )
        await asyncio.to_thread(self.queue.recover)
        self.remote.start()
        self._runner = self._loop.create_task(self._run())

    def wake(self) -> None:
        """Look at incoming/ now. Safe from any thread."""
        if self._loop is None or self._wake is None or self._stopping:
            return
        if threading.get_ident() == self._loop_thread:
            self._wake.set()  # no self-pipe write from the loop's own thread
        else:
            self._loop.call_soon_threadsafe(self._wake.set)

    async def stop(self, timeout: float = 10.0) -> None:
        """Let deliveries in flight finish for up to `timeout` seconds; the rest
        are cancelled and stay in active/, which recovery retries at next start."""
        self._stopping = True
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
        tasks = set(self._inflight.values())  # a group's task once, for all its messages
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=timeout)
            abandoned = sum(1 for t in self._inflight.values() if t in pending)
            for t in pending:
                t.cancel()
            if pending:
                await asyncio.wait(pending)
                log.warning("queue stop: %d deliveries abandoned, retried at next start", abandoned)
        await self.remote.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    async def _run(self) -> None:
        """A wake-up (a commit of the front, a bounce queued, a slot freed) looks
        at incoming/ only; active/ and deferred/ are looked at every
        SCAN_INTERVAL, however often wake-ups come, and at once when the last
        look was cut short by MAX_ACTIVE. A wake-up per commit so costs one
        listing of incoming/, not of every deferred message as well."""
        assert self._wake is not None
        last_full = -SCAN_INTERVAL
        while not self._stopping:
            now = time.monotonic()
            full = self._resume_full or now - last_full >= SCAN_INTERVAL
            if full:
                last_full = now  # after a failed scan too: tried again in SCAN_INTERVAL
            try:
                await self.scan(full=full)
            except Exception:
                log.exception("queue scan failed; retrying in %.0f s", SCAN_INTERVAL)
            wait = last_full + SCAN_INTERVAL - time.monotonic()
            if wait > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), wait)
            self._wake.clear()

    # ------------------------------------------------------------ scheduling

    async def scan(self, full: bool = True) -> None:
        """Take up what is due: incoming/ first, then (`full`) messages stranded
        in active/, then deferred/ whose time has come. The directory listings
        and the renames into active/ are one executor job: a scan follows
        every commit of the front, so its cost is paid per message."""
        assert self._loop is not None
        self._full = False
        self._resume_full = False
        inflight = frozenset(self._inflight)
        taken, active, deferred, limited = await self._loop.run_in_executor(
            None, self._list_and_take, inflight, MAX_ACTIVE - len(inflight), full
        )
        for qid in taken:
            self._next_try.pop(qid, None)
        for group in _groups(taken):
            self._spawn(group)
        if limited:
            self._full = True
            self._resume_full = full
            return
        if not full:
            return
        self._sweep_active(active, inflight)
        if self._full:
            self._resume_full = True
            return
        present = set(deferred)
        for qid in list(self._next_try):
            if qid not in present:
                del self._next_try[qid]
        now = time.time()
        for qid in deferred:
            if len(self._inflight) >= MAX_ACTIVE:
                self._full = True
                self._resume_full = True
                return
            if qid in self._inflight:
                continue
            due = self._next_try.get(qid)
            if due is None:
                status = await asyncio.to_thread(self.queue.read_status, qid)
                due = self._next_try[qid] = status.next_try
            if due <= now and self.queue.move(qid, DEFERRED, ACTIVE):
                del self._next_try[qid]
                self._spawn([qid])

    def _list_and_take(
        self, inflight: frozenset[str], free: int, full: bool
    ) -> tuple[list[str], list[str], list[str], bool]:
        """In the executor: what active/ held before this scan (`full` only),
        the messages moved from incoming/ into active/ (at most `free`), and
        deferred/ (`full` only); `limited` when incoming/ has more than there
        was room for."""
        active = self.queue.ids(ACTIVE) if full else []
        taken: list[str] = []
        limited = False
        for qid in self.queue.ids(INCOMING):
            if len(taken) >= free:
                limited = True
                break
            if qid not in inflight and self.queue.move(qid, INCOMING, ACTIVE):
                taken.append(qid)
        deferred = self.queue.ids(DEFERRED) if full and not limited else []
        return taken, active, deferred, limited

    def _sweep_active(self, active: list[str], held: frozenset[str]) -> None:
        """Take up messages in active/ that no delivery holds: an error left them
        there (see the house rules). Only this manager puts messages there, and
        each delivery is in `_inflight` from the rename on, so nothing live is
        taken twice. `active` was listed while the deliveries in `held` ran:
        one of them that finished since is in the listing but no longer in
        `_inflight`, and is left alone (a whole group finishes at once; if an
        error left it there, the next full scan finds it)."""
        present = set(active)
        for qid in list(self._stranded):
            if qid not in present:
                del self._stranded[qid]
        now = time.time()
        for qid in active:
            if len(self._inflight) >= MAX_ACTIVE:
                self._full = True
                return
            if qid in self._inflight or qid in held:
                continue
            due = self._stranded.setdefault(qid, now)
            if due <= now:
                log.warning("queue_id=%s found in active/ without a delivery; tried again", qid)
                del self._stranded[qid]
                self._spawn([qid])

    def _spawn(self, qids: list[str]) -> None:
        """One task for a group of messages in active/ (see the house rules)."""
        assert self._loop is not None
        task = self._loop.create_task(self._deliver_group(qids))
        for qid in qids:
            self._inflight[qid] = task

    async def _deliver_group(self, qids: list[str]) -> None:
        """One executor job for the group; then, on the loop, each message that
        needs more, each on its own: one's failure or slow peer is not
        another's. A message the job finished costs no more than its result."""
        assert self._loop is not None
        job = self._loop.run_in_executor(None, self._prepare_each, qids)
        try:
            outcomes = await asyncio.shield(job)
        except BaseException:
            # Shutdown (or a job that died): the job cannot stop halfway; what
            # it delivered without removing the queue file stays in active/,
            # delivered again after the restart.
            job.add_done_callback(_release)
            self._finish(qids)
            raise
        done: list[str] = []
        rest = []
        for qid, outcome in outcomes:
            if isinstance(outcome, FileNotFoundError):
                done.append(qid)  # held or deleted by the admin meanwhile
            elif isinstance(outcome, _Prepared) and outcome.finished:
                done.append(qid)
            else:
                rest.append(self._guarded(qid, outcome))
        self._finish(done)
        if rest:
            await asyncio.gather(*rest)

    def _finish(self, qids: list[str]) -> None:
        """These messages' parts are done: their slots are free."""
        for qid in qids:
            self._inflight.pop(qid, None)
        if self._full and qids:
            self.wake()  # a slot is free and mail waits for one: take it now

    async def _guarded(self, qid: str, outcome: _Prepared | Exception) -> None:
        try:
            await self._complete(qid, outcome)
        except asyncio.CancelledError:
            raise
        except Exception as error:
            # A bug, or a user database that cannot be reached now, must turn
            # into neither a bounce nor a loss: try again later.
            if isinstance(error, DirectoryUnavailable):
                log.warning("queue_id=%s deferred: %s", qid, error)
            else:
                log.exception("queue_id=%s delivery failed unexpectedly; deferred", qid)
            try:
                nxt = await asyncio.to_thread(self._defer_after_error, qid)
            except Exception as e:
                again = time.time() + self.policy.retry_initial
                self._stranded[qid] = again
                log.error(
                    "queue_id=%s could not be deferred (%s); tried again from active/ in %.0f s",
                    qid,
                    e,
                    self.policy.retry_initial,
                )
            else:
                if nxt is not None:
                    self._next_try[qid] = nxt
        finally:
            self._finish([qid])

    def _defer_after_error(self, qid: str) -> float | None:
        """active/ -> deferred/ after an error. The status is saved if it can be;
        if not (a full disk), the next try starts from the last saved status (a
        recipient may get the message twice, none loses it) and the time of
        the next try is kept in memory."""
        if not (self.queue.root / ACTIVE / qid).exists():
            return None
        nxt = time.time() + self.policy.retry_initial
        try:
            status = self.queue.read_status(qid)
            self.queue.write_status(qid, replace(status, next_try=nxt))
        except OSError as e:
            log.error("queue_id=%s status not saved (%s); deferred all the same", qid, e)
        return nxt if self.queue.move(qid, ACTIVE, DEFERRED) else None

    # ------------------------------------------------------------ one message

    def _prepare_each(self, qids: list[str]) -> list[tuple[str, _Prepared | Exception]]:
        """A group's executor job: `_prepare` for each message in turn, then
        one fsync of each Maildir's new/ for all the copies linked there,
        then each local message settled and removed (`_finish_copies`). A
        message's exception is handed back with its queue id, and the next
        message goes on as if it had been alone."""
        started: list[tuple[str, _Prepared | _Copies | Exception]] = []
        for qid in qids:
            try:
                started.append((qid, self._prepare(qid)))
            except Exception as e:
                started.append((qid, e))
        unsynced = _sync_maildirs(c for _, c in started if isinstance(c, _Copies))
        outcomes: list[tuple[str, _Prepared | Exception]] = []
        for qid, outcome in started:
            if isinstance(outcome, _Copies):
                try:
                    outcome = self._finish_copies(qid, outcome, unsynced)
                except Exception as e:
                    outcome = e
            outcomes.append((qid, outcome))
        return outcomes

    async def _complete(self, qid: str, outcome: _Prepared | Exception) -> None:
        """What the group's job left of one message, on the loop."""
        if isinstance(outcome, CorruptEntry):
            await asyncio.to_thread(self.queue.quarantine, qid, ACTIVE, str(outcome))
            return
        if isinstance(outcome, Exception):
            # Any other OSError (no descriptors, an I/O error) is not the
            # file's fault: _guarded defers the message.
            raise outcome
        prep = outcome
        try:
            if prep.delivered:
                await self._settle(qid, prep.msg, prep.source, prep.status, prep.status.last_try)
            else:
                await self._process(qid, prep.msg, prep.source, prep.status)
        finally:
            if prep.source.fd is not None:
                os.close(prep.source.fd)

    def _prepare(self, qid: str) -> _Prepared | _Copies:
        """Read the message and its status, expand it on the first try; when
        every recipient left is local, write and link a copy into each
        Maildir, new/ not yet fsynced (`_Copies`). A message with remote
        recipients goes back to the event loop as it is."""
        msg, source = self._read(qid)
        try:
            status, expanded, saved = self._status_and_units(qid, msg.envelope)
            for u in expanded:
                if u.state == FAILED:
                    self._log(qid, u, 0.0, "bounced")
            assert status.units is not None
            if any(u.state == PENDING and not u.local for u in status.units):
                return _Prepared(msg, source, status)
            env = msg.envelope
            copies = tuple(
                (i, self._copy(env, source, u.address, sync=False))
                for i, u in enumerate(status.units)
                if u.state == PENDING
            )
        except BaseException:
            if source.fd is not None:
                os.close(source.fd)
            raise
        return _Copies(msg, source, status, saved, copies)

    def _finish_copies(
        self, qid: str, copies: _Copies, unsynced: dict[str, DeliveryError]
    ) -> _Prepared:
        """The try of a local message, once new/ is fsynced: each copy settled
        and logged (one whose new/ failed its fsync is not delivered: a
        temporary failure); when nothing is left to do (nothing pending, no
        notice to queue), the message removed. The rest (notices, a retry)
        goes back to the event loop."""
        msg, source, status = copies.msg, copies.source, copies.status
        try:
            assert status.units is not None
            units = list(status.units)
            for i, result in copies.results:
                if unsynced and isinstance(result, Path):
                    result = unsynced.get(os.path.dirname(result), result)
                units[i] = self._settled(qid, msg.envelope, units[i], result)
            now = time.time()
            status = status.tried(tuple(units), now)
            if status.pending or self._notices_due(msg.envelope, status, now):
                return _Prepared(msg, source, status, delivered=True)
            # All done. If the admin held it meanwhile, there is nothing left to hold.
            # No status file was read: none to remove (this job is the only writer).
            saved = copies.saved
            if not self.queue.remove(qid, ACTIVE, status=saved, spare=spare_worthy(source.body)):
                self.queue.delete(qid)
        except BaseException:
            if source.fd is not None:
                os.close(source.fd)
            raise
        if source.fd is not None:
            os.close(source.fd)
        return _Prepared(msg, source, status, finished=True)

    def _notices_due(self, env: Envelope, status: Status, now: float) -> bool:
        """Whether `_settle` has a delivery status notice to queue: only then,
        or with recipients pending, must a finished try go back to the loop."""
        assert status.units is not None
        notified = set(status.notified)
        for i, u in enumerate(status.units):
            if i in notified or u.state == PENDING:
                continue
            if u.state == FAILED and env.recipients[u.rcpt].wants("FAILURE"):
                return True
            if u.state == DONE and env.recipients[u.rcpt].wants("SUCCESS") and not u.passed_on:
                return True
        return False

    async def _process(
        self, qid: str, msg: QueuedMessage, source: MessageSource, status: Status
    ) -> None:
        assert status.units is not None
        units = list(status.units)
        try:
            await self._deliver(qid, msg, source, units)
        except asyncio.CancelledError:
            # Shutdown cut the delivery short: keep what is known to be done.
            partial = status.with_units(tuple(units))
            await asyncio.shield(asyncio.to_thread(self._save_only, qid, partial))
            raise
        now = time.time()
        status = status.tried(tuple(units), now)
        await self._settle(qid, msg, source, status, now)

    def _read(self, qid: str) -> tuple[QueuedMessage, MessageSource]:
        """The envelope, and the message as delivered: the header (with the
        front's late fields) in memory, the rest left in the file; a small
        file was read whole in one read, and its body stays in memory."""
        opened = self.queue.open_message(qid, ACTIVE)
        msg, fd = opened.msg, opened.fd
        if opened.body is not None:
            head = split_head(opened.body, msg.size)
            prefix = msg.envelope.with_headers(head)
            return msg, MessageSource(prefix, None, len(head), msg.size, body=opened.body)
        assert fd is not None
        try:
            head = read_head(fd, msg.size)
            prefix = msg.envelope.with_headers(head)
        except BaseException:
            os.close(fd)
            raise
        return msg, MessageSource(prefix, fd, len(head), msg.size)

    def _status_and_units(self, qid: str, env: Envelope) -> tuple[Status, tuple[Unit, ...], bool]:
        """The delivery status and whether a status file holds it; on the first
        try, with the recipients expanded (the units just made, so that
        failures found there are logged)."""
        saved = self.queue.saved_status(qid)
        status = Status() if saved is None else saved
        if status.units is not None:
            return status, (), saved is not None
        expanded = self.expand(env)
        return status.with_units(expanded), expanded, saved is not None

    def _save_only(self, qid: str, status: Status) -> None:
        """Keep what was done when shutdown cuts a delivery short."""
        if (self.queue.root / ACTIVE / qid).exists():
            self.queue.write_status(qid, status)

    async def _signed(self, qid: str, env: Envelope, source: MessageSource) -> MessageSource:
        """The message as it leaves for other domains: DKIM-signed when
        `[dkim] sign` and the envelope's road say so. Signed here, not at the
        front, so that RSA costs nothing on the path to the `250`. The
        signature needs the whole message once; only the new header field
        is kept."""
        if self.signer is None:
            dlog.debug("queue_id=%s dkim: not signed: [dkim] sign is empty", qid)
            return source
        keys, why = self.signer.plan(env.road, source.prefix)
        if not keys:
            dlog.debug("queue_id=%s dkim: %s", qid, why)
            return source
        # Loaded already, with the signer (the config setter says why it is not at the top).
        from postvakt.mailauth.signing import DKIMException, sign

        whole = await asyncio.to_thread(source.read_all)
        # Lines too long for a peer are broken before signing, not after
        # (which would break the signature): the rare such message stays in memory.
        broken = await asyncio.to_thread(break_long_lines, whole)
        try:
            signed = await asyncio.to_thread(sign, broken or whole, keys)
        except DKIMException as e:
            log.error("queue_id=%s dkim signing failed, sent unsigned: %s", qid, e)
            return source
        selectors = ",".join(f"{k.selector}({k.algorithm})" for k in keys)
        dlog.info("queue_id=%s dkim=%s d=%s s=%s", qid, "signed", keys[0].domain, selectors)
        if broken is not None:
            return MessageSource.from_bytes(signed)
        signature = signed[: len(signed) - len(whole)]
        return replace(source, prefix=signature + source.prefix)

    async def _deliver(
        self, qid: str, msg: QueuedMessage, source: MessageSource, units: list[Unit]
    ) -> None:
        env = msg.envelope
        jobs = []
        for i, u in enumerate(units):
            if u.state == PENDING and u.local:
                jobs.append(self._local(qid, env, source, units, i))
        by_domain: dict[str, list[int]] = {}
        for i, u in enumerate(units):
            if u.state == PENDING and not u.local:
                by_domain.setdefault(u.address.rpartition("@")[2].lower(), []).append(i)
        remote_source = await self._signed(qid, env, source) if by_domain else source
        for domain, idx in by_domain.items():
            jobs.append(self._remote(qid, env, remote_source, units, domain, idx))
        await asyncio.gather(*jobs)

    async def _local(
        self, qid: str, env: Envelope, source: MessageSource, units: list[Unit], i: int
    ) -> None:
        units[i] = await asyncio.to_thread(self._deliver_local, qid, env, source, units[i])

    def _deliver_local(self, qid: str, env: Envelope, source: MessageSource, u: Unit) -> Unit:
        """One Maildir copy (new/ fsynced), settled and logged. Blocking."""
        return self._settled(qid, env, u, self._copy(env, source, u.address, sync=True))

    def _copy(
        self, env: Envelope, source: MessageSource, mailbox: str, *, sync: bool
    ) -> Path | DeliveryError:
        """One Maildir copy: its path in new/, or why it failed. Blocking."""
        path = self.directory.maildir(mailbox)
        try:
            return maildir.deliver(
                path, source, return_path=env.sender, delivered_to=mailbox, sync=sync
            )
        except DeliveryError as e:
            return e

    def _settled(self, qid: str, env: Envelope, u: Unit, result: Path | DeliveryError) -> Unit:
        """A local unit after its copy, logged."""
        if isinstance(result, DeliveryError):
            u = u.settle(PENDING if result.temporary else FAILED, result.reply, "local")
        else:
            u = u.settle(
                DONE, Reply(250, "2.0.0", f"delivered to maildir as {result.name}"), "local"
            )
        self._log(qid, u, time.time() - env.received_at, _word(u))
        return u

    async def _remote(
        self,
        qid: str,
        env: Envelope,
        source: MessageSource,
        units: list[Unit],
        domain: str,
        idx: list[int],
    ) -> None:
        mail = MailParams(
            sender=env.sender,
            size=source.size,
            smtputf8=env.smtputf8,
            body=env.body,
            ret=env.ret,
            envid=env.envid,
        )
        rcpts = []
        for i in idx:
            r = env.recipients[units[i].rcpt]
            same = r.address.lower() == units[i].address.lower()
            rcpts.append(
                RcptParams(
                    units[i].address,
                    notify=r.notify if same else None,
                    orcpt=r.orcpt if same else None,
                )
            )
        results: Sequence[RemoteResult] = await self.remote.deliver(domain, mail, rcpts, source)
        for i, res in zip(idx, results, strict=True):
            u = units[i]
            state = _STATE[res.outcome]
            units[i] = replace(u.settle(state, res.reply, res.relay), passed_on=res.peer_dsn)
            self._log(qid, units[i], time.time() - env.received_at, _word(units[i]))

    def _log(self, qid: str, u: Unit, delay: float, word: str) -> None:
        r = u.last_reply
        dlog.info(
            "queue_id=%s to=<%s> relay=%s delay=%.2f status=%s reply=%r",
            qid,
            u.address,
            u.relay or "none",
            delay,
            word,
            str(r).replace("\n", " ") if r else "",
        )
        metrics.delivery(word, delay)

    # ------------------------------------------------------------ expansion

    def expand(self, env: Envelope) -> tuple[Unit, ...]:
        """Envelope recipients -> delivery units (aliases, postmaster, dedup)."""
        units: list[Unit] = []
        seen: set[str] = set()
        for i, r in enumerate(env.recipients):
            addr = r.address
            domain = addr.rpartition("@")[2].lower()
            if "@" in addr and not self.config.is_local_domain(domain):
                targets = [addr]
            else:
                targets = self.directory.resolve(addr)
            if not targets:
                units.append(Unit(i, addr, True, FAILED, _tuple(USER_UNKNOWN), "local", 0))
                continue
            for t in targets:
                if t.lower() in seen:
                    continue
                seen.add(t.lower())
                units.append(Unit(i, t, self.config.is_local_domain(t.rpartition("@")[2].lower())))
        return tuple(units)

    # ------------------------------------------------------------ after a try

    async def _settle(
        self, qid: str, msg: QueuedMessage, source: MessageSource, status: Status, now: float
    ) -> None:
        env = msg.envelope
        q = self.queue
        assert status.units is not None
        units = list(status.units)
        if status.pending and schedule.expired(self.policy, env.received_at, now):
            for i, u in enumerate(units):
                if u.state == PENDING:
                    units[i] = replace(u, state=FAILED)
                    self._log(qid, units[i], now - env.received_at, "expired")
            status = status.with_units(tuple(units))
        notified = set(status.notified)
        fresh = [(i, u) for i, u in enumerate(units) if i not in notified and u.state != PENDING]
        failed = [
            dsn.Report(u, dsn.FAILED)
            for i, u in fresh
            if u.state == FAILED and env.recipients[u.rcpt].wants("FAILURE")
        ]
        succeeded = [
            dsn.Report(u, dsn.DELIVERED if u.local else dsn.RELAYED)
            for i, u in fresh
            if u.state == DONE and env.recipients[u.rcpt].wants("SUCCESS") and not u.passed_on
        ]
        notices = [r for r in (failed, succeeded) if r]
        pending = status.pending
        warn = bool(pending) and schedule.warn_delay(
            self.policy, env.received_at, now, status.warned
        )
        if warn:
            delayed = [
                dsn.Report(u, dsn.DELAYED) for u in pending if env.recipients[u.rcpt].wants("DELAY")
            ]
            if delayed:
                notices.append(delayed)
        queued_all = True
        for reports in notices:
            try:
                await self._notify(qid, msg, source, reports, now)
            except (QueueWriteError, OSError) as e:
                # A full disk, say: the message stays until its notice is queued.
                queued_all = False
                log.error(
                    "queue_id=%s dsn action=%s not queued (%s); the message is kept and tried again",
                    qid,
                    reports[0].action,
                    e,
                )
        if queued_all:
            status = replace(
                status,
                notified=tuple(sorted(notified | {i for i, _ in fresh})),
                warned=status.warned or warn,
            )
        if not pending and queued_all:
            # All done. If the admin held it meanwhile, there is nothing left to hold.
            small = spare_worthy(source.body)
            if not await asyncio.to_thread(q.remove, qid, ACTIVE, spare=small):
                await asyncio.to_thread(q.delete, qid)
            return
        if pending:
            nxt = schedule.next_retry(self.policy, env.received_at, status.attempts, now)
        else:
            nxt = now + self.policy.retry_initial  # only a notice is left to queue
        status = replace(status, next_try=nxt)

        def park() -> bool:
            if (q.root / ACTIVE / qid).exists():
                q.write_status(qid, status)
                return q.move(qid, ACTIVE, DEFERRED)
            if q.find(qid) is not None:
                q.write_status(qid, status)  # held meanwhile: keep what was done for release
            return False

        if await asyncio.to_thread(park):
            self._next_try[qid] = nxt

    async def _notify(
        self,
        qid: str,
        msg: QueuedMessage,
        source: MessageSource,
        reports: list[dsn.Report],
        now: float,
    ) -> None:
        env = msg.envelope
        if not env.sender:
            for rep in reports:
                if rep.action == dsn.FAILED:
                    log.warning(
                        "queue_id=%s to=<%s> bounce dropped: the sender is <> (a bounce is never bounced)",
                        qid,
                        rep.unit.address,
                    )
            return
        d = self.config.delivery
        if source.size <= dsn.RETURN_SIZE_LIMIT:
            original = await asyncio.to_thread(source.read_all)
        else:
            original = source.prefix  # only the header goes back (bounce_size_limit)
        bounce_env, data = dsn.build(
            hostname=self.config.hostname,
            queue_id=qid,
            envelope=env,
            reports=reports,
            original=original,
            original_size=source.size,
            now=now,
            delay_hours=d.delay_warning / 3600,
            give_up_days=d.give_up / 86400,
        )

        def commit() -> str:
            m = self.queue.new_message()
            try:
                m.write(data)
                m.commit(bounce_env)
            except QueueWriteError:
                m.abort()
                raise
            return m.queue_id

        bid = await asyncio.to_thread(commit)
        log.info(
            "queue_id=%s sender=<%s> dsn=%s action=%s recipients=%d",
            qid,
            env.sender,
            bid,
            reports[0].action,
            len(reports),
        )
        self.wake()


@dataclass(frozen=True)
class _Prepared:
    """What a group's job did for a message: `finished` (delivered and
    removed; the descriptor is closed), `delivered` (every local copy tried,
    the settling is left), or neither (remote recipients wait)."""

    msg: QueuedMessage
    source: MessageSource
    status: Status
    delivered: bool = False
    finished: bool = False


@dataclass(frozen=True)
class _Copies:
    """What `QueueManager._prepare` did for a local message: each pending
    unit's copy (its path in new/, or why it failed), new/ not yet fsynced;
    the descriptor is open."""

    msg: QueuedMessage
    source: MessageSource
    status: Status
    saved: bool  # a status file was read (and goes with the message)
    results: tuple[tuple[int, Path | DeliveryError], ...]


def _sync_maildirs(started: Iterable[_Copies]) -> dict[str, DeliveryError]:
    """fsync each new/ that copies of a group were linked into, once; the
    ones whose fsync failed, with the error their copies take. (Directories
    as text: a Path's parent costs more than the rest of the work here.)"""
    dirs = {os.path.dirname(r) for c in started for _, r in c.results if isinstance(r, Path)}
    failed: dict[str, DeliveryError] = {}
    for d in dirs:
        try:
            maildir.sync_new(d)
        except DeliveryError as e:
            failed[d] = e
    return failed


def _release(job: asyncio.Future[list[tuple[str, _Prepared | Exception]]]) -> None:
    """Close the descriptors of a group's job nobody waits for any more."""
    if job.cancelled() or job.exception() is not None:
        return
    for _, outcome in job.result():
        if isinstance(outcome, _Prepared) and not outcome.finished:
            if outcome.source.fd is not None:
                os.close(outcome.source.fd)


def _groups(qids: list[str]) -> list[list[str]]:
    """`qids` in order, in GROUPS groups of about the same size (fewer
    messages are one each), more when GROUP_SIZE calls for them."""
    n = len(qids)
    count = max(min(n, GROUPS), -(-n // GROUP_SIZE))
    return [qids[i * n // count : (i + 1) * n // count] for i in range(count)]


# Only the client's SENT (a 2xx to the body) makes a recipient done.
_STATE = {Outcome.SENT: DONE, Outcome.BOUNCED: FAILED, Outcome.DEFERRED: PENDING}


def _word(u: Unit) -> str:
    return {DONE: "sent", FAILED: "bounced", PENDING: "deferred"}[u.state]


def _tuple(r: Reply) -> tuple[int, str, str]:
    return (r.code, r.enhanced, r.text)
