"""The durable queue.

Design (the state of a message is which file exists where; qmail's rule)

    queue/
      tmp/<id>        being received; its writer holds an flock on it
      incoming/<id>   committed, not yet looked at by the manager
      active/<id>     the manager is delivering it
      deferred/<id>   waiting for its next try
      hold/<id>       held by the admin or by outbound limits; never delivered
      corrupt/<id>    quarantined: unreadable, kept for the admin, never delivered
      status/<id>     per-recipient results, written only by the manager
      spare/<id>      files of finished messages, renamed into tmp/ and
                      written over for new ones instead of making a file
                      (their old bytes are no message of any state)

A queue file is the message bytes as received (the front's `Received:` line
first), then the envelope as JSON, then a fixed-width trailer with sizes and
CRC-32 checksums of both. A file without a valid trailer was never committed.

The write path and its one commit point (`IncomingMessage.commit`):

    1. write chunks to tmp/<id> (a small message is kept in memory and
       written here by the committer; the file is a spare/ one when there is
       one, else a new one), then the envelope and the trailer
                                      -- crash point "after_write"
    2. fsync(tmp/<id>)                -- crash point "after_fsync"
    3. rename tmp/<id> -> incoming/<id> (hold/<id> when the envelope says hold)
       THE COMMIT POINT               -- crash point "after_rename"
    4. fsync(incoming/)
    5. the front sends 250            -- crash points "before_250", "after_250"
                                         (the front calls `crash_point`)

What recovery (`Queue.recover`, run by the manager at start) does with each:

- after_write, after_fsync: the file is still in tmp/ and its writer's lock is
  gone: removed. The client saw no 250 and will send again. Nothing delivered.
- after_rename, before_250: the message is committed: it is delivered. The
  client saw no 250 and may send it again: a duplicate, never a loss.
- after_250: committed and acknowledged: delivered once.
- active/<id> (a delivery was interrupted): moved back to incoming/ and tried
  again; recipients already marked done in status/<id> are not retried. A
  recipient delivered but not yet marked may get the message twice.
- a file whose trailer or envelope does not check out: moved to corrupt/ with
  one error line in the log; never a crash, never delivered.
- status/<id> without a message: removed. A missing or unreadable status
  means "nothing delivered yet".

Manager's cycle (`manager.QueueManager`): incoming/ -> active/ (rename) ->
deliver each pending recipient -> status/<id> rewritten (write, fsync,
rename) -> either everything is final (bounce for failures, committed as a new
queue message *before* the original is removed, so a crash duplicates a
bounce rather than losing it) and the file is removed (renamed into spare/, or unlinked when
spare/ is full), or active/ -> deferred/
until the next try (`schedule`). Errors are temporary unless the peer says 5xx.

Admin changes are single renames as well (hold: any -> hold/, release:
hold/ -> incoming/, retry: deferred/ -> incoming/, delete: unlink), so they are
safe while the manager runs: whichever rename comes second fails and that
side backs off.
"""

from postvakt.queue.envelope import Envelope, Recipient
from postvakt.queue.spool import (
    IncomingMessage,
    Queue,
    QueueWriteError,
    crash_point,
)

__all__ = [
    "Envelope",
    "IncomingMessage",
    "Queue",
    "QueueWriteError",
    "Recipient",
    "crash_point",
]
