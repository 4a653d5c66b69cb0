"""The adapter's tls_pending buffer (server/smtp.py), deterministically.

After STARTTLS, decrypted bytes can reach the session after the handshake has
completed but before `_on_starttls` has resumed and told the core: they belong
to the new TLS session and must be kept, in order, and answered once.

The client here drives TLS through memory BIOs and sends its last handshake
flight (Finished) and the first command after it in one write, so the
server's TLS layer finishes the handshake and decrypts the command in the same
read, before the waiting coroutine can run: the bytes always take that path.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
from pathlib import Path

from postvakt import config as config_mod
from postvakt.server.app import build_app
from postvakt.server.smtp import SMTPSession
from support import write_server_config


class Plain:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def reply(self) -> list[str]:
        while True:
            lines = self.buf.split(b"\r\n")
            for i, ln in enumerate(lines[:-1]):
                if len(ln) >= 4 and ln[3:4] == b" ":
                    self.buf = b"\r\n".join(lines[i + 1 :])
                    return [x.decode() for x in lines[: i + 1]]
            chunk = self.sock.recv(65536)
            assert chunk, f"closed; pending {self.buf!r}"
            self.buf += chunk


def test_command_arriving_with_the_last_handshake_flight_is_kept(tmp_path: Path) -> None:
    cfg_path, _ = write_server_config(tmp_path)
    app = build_app(config_mod.load(cfg_path))
    while_pending: list[bytes] = []

    class Recording(SMTPSession):
        def data_received(self, data: bytes) -> None:
            if self.tls_pending is not None:
                while_pending.append(data)
            super().data_received(data)

    loop = asyncio.new_event_loop()
    server = loop.run_until_complete(
        loop.create_server(lambda: Recording(app, "smtp"), "127.0.0.1", 0)
    )
    port = server.sockets[0].getsockname()[1]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    sock = socket.create_connection(("127.0.0.1", port), timeout=20)
    try:
        plain = Plain(sock)
        assert plain.reply()[0].startswith("220 ")
        sock.sendall(b"EHLO client.test\r\n")
        assert plain.reply()[-1].startswith("250 ")
        sock.sendall(b"STARTTLS\r\n")
        assert plain.reply() == ["220 2.0.0 Ready to start TLS"]
        assert plain.buf == b""

        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = ctx.wrap_bio(incoming, outgoing)
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                if out := outgoing.read():
                    sock.sendall(out)
                data = sock.recv(65536)
                assert data, "closed during the handshake"
                incoming.write(data)
        # The client's Finished is still in `outgoing`: the command goes with it.
        tls.write(b"EHLO after-tls.test\r\n")
        sock.sendall(outgoing.read())

        got = b""
        while not got.endswith(b"\r\n") or b"250 " not in got:
            try:
                got += tls.read(65536)
            except ssl.SSLWantReadError:
                data = sock.recv(65536)
                assert data, f"closed; got {got!r}"
                incoming.write(data)
        lines = got.decode().split("\r\n")[:-1]
        # Answered once, as a command of the TLS session (no STARTTLS offered again).
        assert lines[0].startswith("250-") and lines[-1].startswith("250 ")
        assert sum(1 for ln in lines if ln.startswith("250 ")) == 1
        assert not any("STARTTLS" in ln for ln in lines)
        # And the bytes did come while the buffer was in use.
        assert while_pending == [b"EHLO after-tls.test\r\n"]
    finally:
        sock.close()
        # On the loop's thread: asyncio's Server is not thread-safe, and the
        # loop may be ending this connection (and detaching it) at the same time.
        loop.call_soon_threadsafe(server.close)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
        app.directory.close()
