"""SMTP sessions as C:/S: transcripts (see smtp_harness for the format)."""

from __future__ import annotations

from smtp_harness import BANNER, EHLO_LINES, HOST

EHLO = "\n".join(f"S: {line}" for line in EHLO_LINES)
EHLO_PLAIN = f"{EHLO}\nS: 250-STARTTLS\nS: 250 HELP"
EHLO_TLS = f"{EHLO}\nS: 250-AUTH PLAIN LOGIN\nS: 250 HELP"

TRANSCRIPTS: dict[str, str] = {}

TRANSCRIPTS["simple_message"] = f"""
S: {BANNER}
C: EHLO client.test
{EHLO_PLAIN}
C: MAIL FROM:<alice@other.test>
S: 250 2.1.0 Ok
C: RCPT TO:<bob@pv.test>
S: 250 2.1.5 Ok
C: DATA
S: 354 End data with <CR><LF>.<CR><LF>
--
C: Subject: hello
C:
C: ..a line that starts with a dot
C: .
S: 250 2.0.0 Ok: queued as TEST
C: QUIT
S: 221 2.0.0 Bye
E: Helo(name='client.test', extended=True)
E: MailFrom(sender=Address(local='alice', domain='other.test'), size=None, body=None, smtputf8=False, ret=None, envid=None)
E: RcptTo(recipient=Address(local='bob', domain='pv.test'), notify=None, orcpt=None)
E: DataStart()
E: DataChunk(data=b'Subject: hello\\r\\n\\r\\n.a line that starts with a dot\\r\\n')
E: EndOfData(size=50, problem=None, headers=(('Subject', 'hello'),), headers_complete=True)
E: Quit()
"""

TRANSCRIPTS["helo_then_two_messages_pipelined"] = f"""
S: {BANNER}
C: HELO client.test
S: 250 {HOST}
C: MAIL FROM:<> SIZE=100 BODY=8BITMIME
C: RCPT TO:<bob@pv.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;bob@pv.test
C: RCPT TO:<unknown@pv.test>
C: DATA
S: 250 2.1.0 Ok
S: 250 2.1.5 Ok
S: 550 5.1.1 <unknown@pv.test>: Recipient address rejected: User unknown
S: 354 End data with <CR><LF>.<CR><LF>
--
C: one
C: .
C: MAIL FROM:<carol@other.test> RET=HDRS ENVID=QQ314159
C: RCPT TO:<bob@pv.test> NOTIFY=NEVER
C: DATA
S: 250 2.0.0 Ok: queued as TEST
S: 250 2.1.0 Ok
S: 250 2.1.5 Ok
S: 354 End data with <CR><LF>.<CR><LF>
--
C: .
C: QUIT
S: 250 2.0.0 Ok: queued as TEST
S: 221 2.0.0 Bye
E: Helo(name='client.test', extended=False)
E: MailFrom(sender=Address(local='', domain=''), size=100, body='8BITMIME', smtputf8=False, ret=None, envid=None)
E: RcptTo(recipient=Address(local='bob', domain='pv.test'), notify=('SUCCESS', 'FAILURE'), orcpt='rfc822;bob@pv.test')
E: RcptTo(recipient=Address(local='unknown', domain='pv.test'), notify=None, orcpt=None)
E: DataStart()
E: DataChunk(data=b'one\\r\\n')
E: EndOfData(size=5, problem=None, headers=(), headers_complete=True)
E: MailFrom(sender=Address(local='carol', domain='other.test'), size=None, body=None, smtputf8=False, ret='HDRS', envid='QQ314159')
E: RcptTo(recipient=Address(local='bob', domain='pv.test'), notify=('NEVER',), orcpt=None)
E: DataStart()
E: EndOfData(size=0, problem=None, headers=(), headers_complete=True)
E: Quit()
"""

TRANSCRIPTS["sequence_errors"] = f"""
S: {BANNER}
C: MAIL FROM:<a@other.test>
S: 503 5.5.1 Error: send HELO/EHLO first
C: RCPT TO:<bob@pv.test>
S: 503 5.5.1 Error: need MAIL command
C: DATA
S: 503 5.5.1 Error: need RCPT command
C: EHLO client.test
{EHLO_PLAIN}
C: RCPT TO:<bob@pv.test>
S: 503 5.5.1 Error: need MAIL command
C: DATA
S: 503 5.5.1 Error: need RCPT command
C: MAIL FROM:<a@other.test>
S: 250 2.1.0 Ok
C: MAIL FROM:<a@other.test>
S: 503 5.5.1 Error: nested MAIL command
C: DATA
S: 503 5.5.1 Error: need RCPT command
C: RCPT TO:<unknown@pv.test>
S: 550 5.1.1 <unknown@pv.test>: Recipient address rejected: User unknown
C: DATA
S: 503 5.5.1 Error: need RCPT command
C: RSET
S: 250 2.0.0 Ok
C: RCPT TO:<bob@pv.test>
S: 503 5.5.1 Error: need MAIL command
"""

TRANSCRIPTS["syntax_errors"] = f"""
S: {BANNER}
C: EHLO
S: 501 5.5.4 Syntax: EHLO hostname
C: HELO
S: 501 5.5.4 Syntax: HELO hostname
C: EHLO client.test
{EHLO_PLAIN}
C: MAIL TO:<a@other.test>
S: 501 5.5.4 Syntax: MAIL FROM:<address>
C: MAIL FROM:
S: 501 5.5.4 Syntax: MAIL FROM:<address>
C: MAIL FROM:<a@other.test> FOO=BAR
S: 555 5.5.4 Unsupported option: FOO
C: MAIL FROM:<a@other.test> SIZE=abc
S: 501 5.5.4 Bad SIZE parameter syntax
C: MAIL FROM:<a@other.test> SIZE=10001
S: 552 5.3.4 Message size exceeds fixed limit
C: MAIL FROM:<a@other.test> BODY=BINARYMIME
S: 501 5.5.4 Bad BODY parameter syntax
C: MAIL FROM:<a@other.test> SIZE=1 SIZE=2
S: 501 5.5.4 Duplicate SIZE parameter
C: MAIL FROM:<a@other.test> AUTH=<alice@pv.test>
S: 250 2.1.0 Ok
C: RCPT FROM:<bob@pv.test>
S: 501 5.5.4 Syntax: RCPT TO:<address>
C: RCPT TO:<>
S: 501 5.1.3 <>: null address not allowed here
C: RCPT TO:<bob@pv.test> NOTIFY=NEVER,SUCCESS
S: 501 5.5.4 Bad NOTIFY parameter syntax
C: RCPT TO:<bob@pv.test> SIZE=10
S: 555 5.5.4 Unsupported option: SIZE
C: RCPT TO:<bob@pv.test>
S: 250 2.1.5 Ok
C: DATA now
S: 501 5.5.4 Syntax: DATA
C: RSET please
S: 501 5.5.4 Syntax: RSET
C: VRFY
S: 501 5.5.4 Syntax: VRFY address
C: VRFY bob
S: 252 2.0.0 Cannot VRFY user, but will accept message and attempt delivery
C: EXPN staff
S: 502 5.5.1 Error: command not implemented
C: HELP
S: 214 2.0.0 Commands: HELO EHLO MAIL RCPT DATA RSET NOOP QUIT VRFY HELP STARTTLS AUTH
C: NOOP anything
S: 250 2.0.0 Ok
C: BDAT 10 LAST
S: 500 5.5.2 Error: command not recognized
C:
S: 500 5.5.2 Error: command not recognized
C: QUIT now
S: 501 5.5.4 Syntax: QUIT
C: quit
S: 221 2.0.0 Bye
"""

TRANSCRIPTS["ehlo_resets_transaction"] = f"""
S: {BANNER}
C: ehlo client.test
{EHLO_PLAIN}
C: mail from:<a@other.test>
S: 250 2.1.0 Ok
C: rcpt to:<bob@pv.test>
S: 250 2.1.5 Ok
C: EHLO again.test
{EHLO_PLAIN}
C: DATA
S: 503 5.5.1 Error: need RCPT command
C: MAIL FROM: <a@other.test>
S: 250 2.1.0 Ok
"""

TRANSCRIPTS["starttls_then_auth_plain"] = f"""
S: {BANNER}
C: EHLO client.test
{EHLO_PLAIN}
C: AUTH PLAIN AGFsaWNlAHNlY3JldA==
S: 538 5.7.11 Encryption required for requested authentication mechanism
C: STARTTLS
S: 220 2.0.0 Ready to start TLS
--
C: MAIL FROM:<alice@pv.test>
S: 503 5.5.1 Error: send HELO/EHLO first
C: EHLO client.test
{EHLO_TLS}
C: STARTTLS
S: 554 5.5.1 Error: TLS already active
C: AUTH PLAIN AGFsaWNlAHdyb25n
S: 535 5.7.8 Authentication credentials invalid
C: AUTH PLAIN AGFsaWNlAHNlY3JldA==
S: 235 2.7.0 Authentication successful
C: AUTH PLAIN AGFsaWNlAHNlY3JldA==
S: 503 5.5.1 Error: already authenticated
C: MAIL FROM:<alice@pv.test>
S: 250 2.1.0 Ok
C: AUTH LOGIN
S: 503 5.5.1 Error: MAIL transaction in progress
"""

TRANSCRIPTS["auth_login_and_plain_challenges"] = f"""
S: {BANNER}
C: STARTTLS
S: 220 2.0.0 Ready to start TLS
--
C: EHLO client.test
{EHLO_TLS}
C: AUTH LOGIN
S: 334 VXNlcm5hbWU6
C: YWxpY2U=
S: 334 UGFzc3dvcmQ6
C: d3Jvbmc=
S: 535 5.7.8 Authentication credentials invalid
C: AUTH LOGIN YWxpY2U=
S: 334 UGFzc3dvcmQ6
C: *
S: 501 5.7.0 Authentication aborted
C: AUTH PLAIN
S~ 334\\x20\\r\\n
C: !!!
S: 501 5.5.2 Can't decode base64
C: AUTH CRAM-MD5
S: 504 5.5.4 Unrecognized authentication type
C: AUTH
S: 501 5.5.4 Syntax: AUTH mechanism [initial-response]
C: AUTH PLAIN
S~ 334\\x20\\r\\n
C: AGFsaWNlAHNlY3JldA==
S: 235 2.7.0 Authentication successful
C: MAIL FROM:<alice@pv.test>
S: 250 2.1.0 Ok
"""

TRANSCRIPTS["submission_requires_tls_then_auth"] = f"""
S: {BANNER}
C: EHLO client.test
{EHLO_PLAIN}
C: MAIL FROM:<alice@pv.test>
S: 530 5.7.0 Must issue a STARTTLS command first
C: STARTTLS extra
S: 501 5.5.4 Syntax: STARTTLS
C: STARTTLS
S: 220 2.0.0 Ready to start TLS
--
C: EHLO client.test
{EHLO_TLS}
C: MAIL FROM:<alice@pv.test>
S: 530 5.7.0 Authentication required
C: AUTH PLAIN AGFsaWNlAHNlY3JldA==
S: 235 2.7.0 Authentication successful
C: MAIL FROM:<alice@pv.test>
S: 250 2.1.0 Ok
"""

TRANSCRIPTS["bad_lines_keep_stream_in_sync"] = f"""
S: {BANNER}
C~ EHLO x\\n
S: 500 5.5.2 Error: bare <LF> received
C~ EHLO c\\r.test\\r\\n
S: 500 5.5.2 Error: bare <CR> received
C~ EHLO a\\x00b\\r\\n
S: 500 5.5.2 Error: NUL character in command
C~ EHLO \\xe4\\r\\n
S: 500 5.5.2 Error: command is not valid UTF-8
C: NOOP
S: 250 2.0.0 Ok
"""

TRANSCRIPTS["application_answers_per_row"] = f"""
S: {BANNER}
C: EHLO client.test
{EHLO_PLAIN}
A: 451 4.3.0 Try again later
C: MAIL FROM:<a@other.test>
S: 451 4.3.0 Try again later
A: 250 2.1.0 Sender ok
C: MAIL FROM:<a@other.test>
S: 250 2.1.0 Sender ok
A: 250 2.1.5 Recipient ok
C: RCPT TO:<bob@pv.test>
S: 250 2.1.5 Recipient ok
A: 554 5.5.1 Error: no valid recipients
C: DATA
S: 554 5.5.1 Error: no valid recipients
--
A: 354 Go ahead
C: DATA
S: 354 Go ahead
--
C: Subject: x
C:
C: body
C: .
A: 451 4.3.0 Queue file write error
S: 451 4.3.0 Queue file write error
C: MAIL FROM:<a@other.test>
S: 250 2.1.0 Ok
"""

# Settings per transcript (default: smtp_harness.SETTINGS).
OPTIONS: dict[str, dict[str, object]] = {
    "submission_requires_tls_then_auth": {"require_tls": True, "require_auth": True},
    "syntax_errors": {"hard_error_limit": 100},
}
