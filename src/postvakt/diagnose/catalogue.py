"""Every word the doctor and the relay test say, in every language.

Rules of the house:
- One catalogue: cases (title, explanation, what to change), findings and
  labels, each keyed by a stable id that `--json` prints, so a helpdesk tool
  can use the id and ignore the words.
- A language is one more key per entry; a missing entry falls back to English,
  and a test checks that every language covers every id.
- Texts speak to the person at the mail client, not to the admin: the settings
  named are the ones mail programs show ("My outgoing server (SMTP) requires
  authentication", port, "SSL/TLS" or "STARTTLS").
- Placeholders are `{name}`; unknown ones stay as written instead of failing.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from typing import Any

LANGUAGES = ("en", "sv")
DEFAULT_LANGUAGE = "en"


@dataclass(frozen=True)
class CaseText:
    title: str
    explanation: str
    advice: tuple[str, ...]


# Case id -> language -> text. The ids are the contract (`--json`, tests).
CASES: dict[str, dict[str, CaseText]] = {
    "ok": {
        "en": CaseText(
            "Everything is fine: the server would accept this mail",
            "The server {server} accepted the sender {sender} and the recipient {rcpt} "
            "with these settings. No message was sent.",
            (),
        ),
        "sv": CaseText(
            "Allt fungerar: servern skulle ta emot brevet",
            "Servern {server} godkände avsändaren {sender} och mottagaren {rcpt} "
            "med de här inställningarna. Inget brev skickades.",
            (),
        ),
    },
    "pop_before_smtp": {
        "en": CaseText(
            "Sending works only right after you check your mail (POP-before-SMTP)",
            "The server refused to pass mail on for you until you logged in to check your mail "
            "at {pop3}; after that it accepted the recipient {rcpt}. This permission lasts only "
            "a while after each check.",
            (
                "Set the mail program to check for new mail before sending (or send right after "
                "fetching mail).",
                'Better: turn on "My outgoing server (SMTP) requires authentication" if the '
                "provider offers it; then sending works at any time.",
            ),
        ),
        "sv": CaseText(
            "Att skicka fungerar bara direkt efter att du hämtat post (POP före SMTP)",
            "Servern vägrade skicka vidare post åt dig tills du loggade in och hämtade post "
            "på {pop3}; därefter godkände den mottagaren {rcpt}. Tillståndet gäller bara en "
            "stund efter varje hämtning.",
            (
                "Ställ in e-postprogrammet så att det hämtar ny post innan det skickar (eller "
                "skicka direkt efter att du hämtat post).",
                'Bättre: slå på "Servern för utgående e-post (SMTP) kräver autentisering" om '
                "leverantören erbjuder det; då går det att skicka när som helst.",
            ),
        ),
    },
    "relay_denied_no_auth": {
        "en": CaseText(
            "Relaying denied: you are not logged in and not on the provider's network",
            "You are sending through {server} without logging in, from a network the server "
            "does not know. The server cannot tell you from a spammer, so it refuses to pass mail "
            "on to other domains ({rcpt}). This is typical when you send through your home "
            "provider's server from another network (a hotel, work, a mobile connection). "
            "The server said: {reply}",
            (
                'If your provider offers it: turn on "My outgoing server (SMTP) requires '
                'authentication" with the same user name and password as for incoming mail.',
                "Use port 587 with STARTTLS (or port 465 with SSL/TLS) instead of port 25.",
                "Or use the outgoing (SMTP) server of the network you are on now.",
                "If the provider uses POP-before-SMTP: check your mail first, then send.",
            ),
        ),
        "sv": CaseText(
            "Vidarebefordran nekad: du är inte inloggad och inte på leverantörens nät",
            "Du skickar via {server} utan att logga in, från ett nät som servern inte känner "
            "till. Servern kan inte skilja dig från en spammare och vägrar därför skicka post "
            "vidare till andra domäner ({rcpt}). Det händer ofta när du skickar via din "
            "hemmaleverantörs server från ett annat nät (hotell, jobbet, mobilt nät). "
            "Servern svarade: {reply}",
            (
                'Om leverantören erbjuder det: slå på "Servern för utgående e-post (SMTP) kräver '
                'autentisering" med samma användarnamn och lösenord som för inkommande post.',
                "Använd port 587 med STARTTLS (eller port 465 med SSL/TLS) i stället för port 25.",
                "Eller använd den utgående (SMTP) servern för det nät du sitter på nu.",
                "Om leverantören använder POP före SMTP: hämta din post först och skicka sedan.",
            ),
        ),
    },
    "auth_not_used": {
        "en": CaseText(
            "The server wants you to log in, but the mail program does not",
            "The server {server} offers login (SMTP authentication) but you did not log in, so "
            "it refused the mail. The server said: {reply}",
            (
                'Turn on "My outgoing server (SMTP) requires authentication" and use the same '
                "user name and password as for incoming mail.",
                "Use port 587 with STARTTLS, or port 465 with SSL/TLS.",
            ),
        ),
        "sv": CaseText(
            "Servern vill att du loggar in, men e-postprogrammet gör det inte",
            "Servern {server} erbjuder inloggning (SMTP-autentisering) men du loggade inte in, "
            "så den vägrade ta emot brevet. Servern svarade: {reply}",
            (
                'Slå på "Servern för utgående e-post (SMTP) kräver autentisering" och använd '
                "samma användarnamn och lösenord som för inkommande post.",
                "Använd port 587 med STARTTLS, eller port 465 med SSL/TLS.",
            ),
        ),
    },
    "auth_failed": {
        "en": CaseText(
            "Login failed: wrong user name or password",
            "The server {server} refused the login for {login}. The server said: {reply}",
            (
                "Check the user name (often the whole e-mail address) and the password under the "
                "outgoing server settings; retype the password.",
                "If the password was changed recently, change it in the mail program too.",
                "If it still fails, ask the provider whether the account is locked.",
            ),
        ),
        "sv": CaseText(
            "Inloggningen misslyckades: fel användarnamn eller lösenord",
            "Servern {server} godtog inte inloggningen för {login}. Servern svarade: {reply}",
            (
                "Kontrollera användarnamnet (ofta hela e-postadressen) och lösenordet i "
                "inställningarna för utgående server; skriv in lösenordet igen.",
                "Om lösenordet nyligen byttes: byt det i e-postprogrammet också.",
                "Om det fortfarande inte fungerar: fråga leverantören om kontot är spärrat.",
            ),
        ),
    },
    "auth_requires_tls": {
        "en": CaseText(
            "Login is possible only over an encrypted connection",
            "The server {server} accepts a login only after the connection is encrypted, and the "
            "mail program does not encrypt it. {reply}",
            (
                "Turn on encryption: STARTTLS on port 587, or SSL/TLS on port 465.",
                'Keep "My outgoing server (SMTP) requires authentication" turned on.',
            ),
        ),
        "sv": CaseText(
            "Inloggning går bara över en krypterad förbindelse",
            "Servern {server} tar bara emot inloggning när förbindelsen är krypterad, och "
            "e-postprogrammet krypterar den inte. {reply}",
            (
                "Slå på kryptering: STARTTLS på port 587, eller SSL/TLS på port 465.",
                'Låt "Servern för utgående e-post (SMTP) kräver autentisering" vara påslaget.',
            ),
        ),
    },
    "tls_required": {
        "en": CaseText(
            "The server wants an encrypted connection first",
            "The server {server} requires STARTTLS before it takes mail, and the mail program "
            "does not use it. The server said: {reply}",
            ("Set the connection security to STARTTLS (port 587) or SSL/TLS (port 465).",),
        ),
        "sv": CaseText(
            "Servern kräver en krypterad förbindelse först",
            "Servern {server} kräver STARTTLS innan den tar emot post, och e-postprogrammet "
            "använder det inte. Servern svarade: {reply}",
            ("Ställ in anslutningssäkerheten på STARTTLS (port 587) eller SSL/TLS (port 465).",),
        ),
    },
    "auth_unavailable": {
        "en": CaseText(
            "The server does not offer login on this port",
            "You asked to log in as {login}, but {server} offers no SMTP authentication here "
            "(not even after STARTTLS).",
            (
                "Check the outgoing server name and port with the provider; logins are usually "
                "on port 587 (STARTTLS) or 465 (SSL/TLS).",
            ),
        ),
        "sv": CaseText(
            "Servern erbjuder ingen inloggning på den här porten",
            "Du ville logga in som {login}, men {server} erbjuder ingen SMTP-autentisering här "
            "(inte heller efter STARTTLS).",
            (
                "Kontrollera namnet och porten för utgående server med leverantören; inloggning "
                "sker oftast på port 587 (STARTTLS) eller 465 (SSL/TLS).",
            ),
        ),
    },
    "relay_denied_after_auth": {
        "en": CaseText(
            "Logged in, but the server still refuses to pass the mail on",
            "The login as {login} worked, but {server} still refused the recipient {rcpt}. "
            "The account may not be allowed to send to other domains on this port. "
            "The server said: {reply}",
            (
                "Use port 587 with STARTTLS (or 465 with SSL/TLS); some servers allow sending "
                "only there.",
                "Ask the provider whether this account may send mail to other domains.",
            ),
        ),
        "sv": CaseText(
            "Inloggad, men servern vägrar ändå skicka brevet vidare",
            "Inloggningen som {login} fungerade, men {server} vägrade ändå mottagaren {rcpt}. "
            "Kontot får kanske inte skicka till andra domäner på den här porten. "
            "Servern svarade: {reply}",
            (
                "Använd port 587 med STARTTLS (eller 465 med SSL/TLS); vissa servrar tillåter "
                "utskick bara där.",
                "Fråga leverantören om kontot får skicka post till andra domäner.",
            ),
        ),
    },
    "sender_not_owned": {
        "en": CaseText(
            "The sender address is not yours",
            "You logged in as {login}, but the sender address {sender} does not belong to that "
            "account, so the server refuses it (it stops people from sending in someone else's "
            "name). The server said: {reply}",
            (
                'Set the e-mail address of the account ("Your name / E-mail address") to the '
                "address that belongs to {login}.",
                "If you need to send as {sender}, ask the provider to add it to your account "
                "(as an alias or a send-as permission).",
            ),
        ),
        "sv": CaseText(
            "Avsändaradressen är inte din",
            "Du loggade in som {login}, men avsändaradressen {sender} hör inte till det kontot, "
            "så servern vägrar (det hindrar andra från att skicka i ditt namn). "
            "Servern svarade: {reply}",
            (
                "Ställ in kontots e-postadress på den adress som hör till {login}.",
                "Om du behöver skicka som {sender}: be leverantören lägga till den på ditt konto "
                "(som alias eller med rätt att skicka som).",
            ),
        ),
    },
    "sender_not_logged_in": {
        "en": CaseText(
            "A sender address of this server's own domain needs a login",
            "The sender {sender} belongs to a domain that {server} handles itself, so it accepts "
            "that sender only from someone who has logged in. The server said: {reply}",
            (
                'Turn on "My outgoing server (SMTP) requires authentication".',
                "Use port 587 with STARTTLS or 465 with SSL/TLS.",
            ),
        ),
        "sv": CaseText(
            "En avsändare i serverns egen domän kräver inloggning",
            "Avsändaren {sender} hör till en domän som {server} själv hanterar, så den godtar "
            "avsändaren bara från någon som har loggat in. Servern svarade: {reply}",
            (
                'Slå på "Servern för utgående e-post (SMTP) kräver autentisering".',
                "Använd port 587 med STARTTLS eller 465 med SSL/TLS.",
            ),
        ),
    },
    "sender_rejected": {
        "en": CaseText(
            "The server refused the sender address",
            "The server {server} refused the sender {sender}. The server said: {reply}",
            (
                "Check the e-mail address set in the account; it must be your own, complete "
                "address.",
            ),
        ),
        "sv": CaseText(
            "Servern vägrade avsändaradressen",
            "Servern {server} vägrade avsändaren {sender}. Servern svarade: {reply}",
            ("Kontrollera kontots e-postadress; den ska vara din egen, fullständiga adress.",),
        ),
    },
    "recipient_unknown": {
        "en": CaseText(
            "The recipient address does not exist",
            "The server {server} does not know the recipient {rcpt}. The settings are fine; the "
            "address is wrong. The server said: {reply}",
            (
                "Check the recipient address for typing errors.",
                "Ask the recipient for the right address.",
            ),
        ),
        "sv": CaseText(
            "Mottagaradressen finns inte",
            "Servern {server} känner inte till mottagaren {rcpt}. Inställningarna är rätt; "
            "adressen är fel. Servern svarade: {reply}",
            (
                "Kontrollera mottagaradressen efter stavfel.",
                "Fråga mottagaren efter rätt adress.",
            ),
        ),
    },
    "port_blocked": {
        "en": CaseText(
            "The connection to port {port} gets no answer: the network probably blocks it",
            "Connecting to {server} timed out. Networks often block port 25 for home and guest "
            "users to stop spam, and some firewalls block other mail ports too. {alt}",
            (
                "Use port 587 with STARTTLS, or port 465 with SSL/TLS, with login turned on.",
                "Or use the outgoing (SMTP) server of the network you are on now.",
            ),
        ),
        "sv": CaseText(
            "Anslutningen till port {port} får inget svar: nätet blockerar den troligen",
            "Anslutningen till {server} tog för lång tid. Nät blockerar ofta port 25 för hem- "
            "och gästanvändare för att stoppa spam, och vissa brandväggar blockerar även andra "
            "e-postportar. {alt}",
            (
                "Använd port 587 med STARTTLS, eller port 465 med SSL/TLS, med inloggning påslagen.",
                "Eller använd den utgående (SMTP) servern för det nät du sitter på nu.",
            ),
        ),
    },
    "connection_refused": {
        "en": CaseText(
            "Nothing answers on port {port}",
            "The computer {host} answered but refused the connection on port {port}: no mail "
            "service runs there. {alt}",
            ("Check the outgoing server name and port in the account settings.",),
        ),
        "sv": CaseText(
            "Ingenting svarar på port {port}",
            "Datorn {host} svarade men vägrade anslutningen på port {port}: ingen e-posttjänst "
            "körs där. {alt}",
            ("Kontrollera namnet och porten för utgående server i kontoinställningarna.",),
        ),
    },
    "server_unreachable": {
        "en": CaseText(
            "The server cannot be reached",
            "The server {host} could not be reached: {detail}",
            (
                "Check the outgoing server name for typing errors.",
                "Check that the computer is connected to the internet.",
            ),
        ),
        "sv": CaseText(
            "Servern går inte att nå",
            "Servern {host} gick inte att nå: {detail}",
            (
                "Kontrollera namnet på utgående server efter stavfel.",
                "Kontrollera att datorn är ansluten till internet.",
            ),
        ),
    },
    "server_rejects_connection": {
        "en": CaseText(
            "The server refuses to talk to this connection",
            "The server {server} refused the connection right away. It may block your network's "
            "address. The server said: {reply}",
            (
                "Use port 587 with login, or the outgoing server of the network you are on.",
                "If it persists, send the provider the server's words above.",
            ),
        ),
        "sv": CaseText(
            "Servern vägrar prata med den här anslutningen",
            "Servern {server} vägrade anslutningen direkt. Den kanske blockerar ditt näts "
            "adress. Servern svarade: {reply}",
            (
                "Använd port 587 med inloggning, eller den utgående servern för det nät du "
                "sitter på.",
                "Om det fortsätter: skicka serverns ord ovan till leverantören.",
            ),
        ),
    },
    "tls_problem": {
        "en": CaseText(
            "The encrypted connection does not work",
            "Encryption with {server} failed: {detail}",
            (
                "Check the connection security: STARTTLS belongs with port 587 (and 25), SSL/TLS "
                "with port 465. Mixing them up is the most common cause.",
                "If the certificate is the problem, tell the provider; do not turn encryption off.",
            ),
        ),
        "sv": CaseText(
            "Den krypterade förbindelsen fungerar inte",
            "Krypteringen mot {server} misslyckades: {detail}",
            (
                "Kontrollera anslutningssäkerheten: STARTTLS hör ihop med port 587 (och 25), "
                "SSL/TLS med port 465. Att blanda ihop dem är den vanligaste orsaken.",
                "Om certifikatet är problemet: säg till leverantören; slå inte av krypteringen.",
            ),
        ),
    },
    "too_many_errors": {
        "en": CaseText(
            "The server is refusing because of too many errors or logins",
            "The server {server} stopped the session: {reply}",
            ("Wait a few minutes, fix the user name and password, then try once.",),
        ),
        "sv": CaseText(
            "Servern vägrar på grund av för många fel eller inloggningar",
            "Servern {server} avbröt sessionen: {reply}",
            ("Vänta några minuter, rätta användarnamn och lösenord och försök sedan en gång.",),
        ),
    },
    "message_too_big": {
        "en": CaseText(
            "The message is too big for the server",
            "The server refuses messages of this size: {reply}",
            ("Send smaller attachments, or share large files through a link.",),
        ),
        "sv": CaseText(
            "Brevet är för stort för servern",
            "Servern tar inte emot så stora brev: {reply}",
            ("Skicka mindre bilagor, eller dela stora filer med en länk.",),
        ),
    },
    "temporary_failure": {
        "en": CaseText(
            "The server has a temporary problem",
            "The server {server} answered with a temporary refusal; trying again later may work. "
            "The server said: {reply}",
            ("Try again in a few minutes. If it lasts, send the server's words to the provider.",),
        ),
        "sv": CaseText(
            "Servern har ett tillfälligt problem",
            "Servern {server} svarade med ett tillfälligt nej; det kan fungera om en stund. "
            "Servern svarade: {reply}",
            (
                "Försök igen om några minuter. Om det består: skicka serverns ord till leverantören.",
            ),
        ),
    },
    "rejected_other": {
        "en": CaseText(
            "The server refused, for a reason the doctor does not know",
            "The server {server} said: {reply}",
            ("Send the server's words above to the provider's helpdesk.",),
        ),
        "sv": CaseText(
            "Servern vägrade, av ett skäl som doktorn inte känner igen",
            "Servern {server} svarade: {reply}",
            ("Skicka serverns ord ovan till leverantörens support.",),
        ),
    },
    "not_recognised": {
        "en": CaseText(
            "Not recognised: this does not look like a mail server error",
            "No SMTP reply code, client error number or known server wording was found in the text.",
            (
                "Paste the whole error message as the mail program shows it, including the "
                "three-digit code (e.g. 550) or the error number (e.g. 0x800CCC79).",
            ),
        ),
        "sv": CaseText(
            "Känns inte igen: det här ser inte ut som ett fel från en e-postserver",
            "Ingen SMTP-svarskod, inget felnummer från e-postprogrammet och ingen känd "
            "serverformulering hittades i texten.",
            (
                "Klistra in hela felmeddelandet som e-postprogrammet visar det, med den "
                "tresiffriga koden (t.ex. 550) eller felnumret (t.ex. 0x800CCC79).",
            ),
        ),
    },
}


# Findings: facts the probes established. Id -> language -> text.
FINDINGS: dict[str, dict[str, str]] = {
    "port_open": {
        "en": "Port {port} ({service}): open, the server greets: {banner}",
        "sv": "Port {port} ({service}): öppen, servern hälsar: {banner}",
    },
    "port_refused": {
        "en": "Port {port} ({service}): connection refused (no service there)",
        "sv": "Port {port} ({service}): anslutningen vägrades (ingen tjänst där)",
    },
    "port_timeout": {
        "en": "Port {port} ({service}): no answer (blocked or filtered on the way)",
        "sv": "Port {port} ({service}): inget svar (blockerad eller filtrerad på vägen)",
    },
    "port_no_banner": {
        "en": "Port {port} ({service}): connects, but no server greeting arrives "
        "(something on the way swallows the connection)",
        "sv": "Port {port} ({service}): ansluter, men ingen hälsning kommer "
        "(något på vägen sväljer anslutningen)",
    },
    "port_rejected": {
        "en": "Port {port} ({service}): the server refuses the connection: {banner}",
        "sv": "Port {port} ({service}): servern vägrar anslutningen: {banner}",
    },
    "port_tls": {
        "en": "Port {port} ({service}): SSL/TLS handshake fails: {detail}",
        "sv": "Port {port} ({service}): SSL/TLS-handskakningen misslyckas: {detail}",
    },
    "port_unreachable": {
        "en": "Port {port} ({service}): not reachable: {detail}",
        "sv": "Port {port} ({service}): går inte att nå: {detail}",
    },
    "port25_blocked": {
        "en": "The SMTP port {port} gets no answer while other ports do: the network you are on "
        "blocks it (common for port 25 on home and guest networks)",
        "sv": "SMTP-porten {port} får inget svar medan andra portar gör det: nätet du sitter på "
        "blockerar den (vanligt för port 25 på hem- och gästnät)",
    },
    "starttls_offered": {
        "en": "STARTTLS is offered on port {port}",
        "sv": "STARTTLS erbjuds på port {port}",
    },
    "starttls_missing": {
        "en": "STARTTLS is not offered on port {port}: the connection stays unencrypted",
        "sv": "STARTTLS erbjuds inte på port {port}: förbindelsen förblir okrypterad",
    },
    "auth_before_tls": {
        "en": "Login mechanisms offered before encryption: {mechs}",
        "sv": "Inloggningsmetoder före kryptering: {mechs}",
    },
    "auth_after_tls": {
        "en": "Login mechanisms offered after STARTTLS: {mechs}",
        "sv": "Inloggningsmetoder efter STARTTLS: {mechs}",
    },
    "auth_after_tls_only": {
        "en": "Login is offered only after STARTTLS",
        "sv": "Inloggning erbjuds bara efter STARTTLS",
    },
    "auth_offered": {
        "en": "The server offers login (SMTP AUTH) on port {ports}: turning on authentication "
        "in the mail program should fix this",
        "sv": "Servern erbjuder inloggning (SMTP AUTH) på port {ports}: att slå på "
        "autentisering i e-postprogrammet bör lösa det här",
    },
    "auth_not_offered": {
        "en": "No login (SMTP AUTH) is offered on port {port}",
        "sv": "Ingen inloggning (SMTP AUTH) erbjuds på port {port}",
    },
    "plaintext_auth": {
        "en": "The server accepts passwords over an unencrypted connection on "
        "port {port} (anyone on the way can read them)",
        "sv": "Servern tar emot lösenord över en okrypterad förbindelse på port "
        "{port} (vem som helst på vägen kan läsa dem)",
    },
    "tls_version": {
        "en": "Encryption on port {port}: {version}",
        "sv": "Kryptering på port {port}: {version}",
    },
    "cert_ok": {
        "en": "Certificate for {names}: valid, trusted, {days} days left",
        "sv": "Certifikat för {names}: giltigt, betrott, {days} dagar kvar",
    },
    "cert_self_signed": {
        "en": "Certificate is self-signed: mail programs will warn or refuse",
        "sv": "Certifikatet är självsignerat: e-postprogram varnar eller vägrar",
    },
    "cert_untrusted": {
        "en": "Certificate is not trusted: {error}",
        "sv": "Certifikatet är inte betrott: {error}",
    },
    "cert_expired": {"en": "Certificate expired on {date}", "sv": "Certifikatet gick ut {date}"},
    "cert_expires_soon": {
        "en": "Certificate expires in {days} days",
        "sv": "Certifikatet går ut om {days} dagar",
    },
    "cert_name_mismatch": {
        "en": "Certificate names ({names}) do not include {name}: the mail "
        "program will warn about the server name",
        "sv": "Certifikatets namn ({names}) innehåller inte {name}: "
        "e-postprogrammet varnar för servernamnet",
    },
    "login_ok": {
        "en": "Login as {login} succeeded (port {port})",
        "sv": "Inloggning som {login} lyckades (port {port})",
    },
    "login_failed": {
        "en": "Login as {login} failed (port {port}): {reply}",
        "sv": "Inloggning som {login} misslyckades (port {port}): {reply}",
    },
    "attempt": {
        "en": "Port {port}, {security}, {auth}: {outcome}",
        "sv": "Port {port}, {security}, {auth}: {outcome}",
    },
    "pop3_login_ok": {
        "en": "POP3 login as {login} at {pop3} succeeded",
        "sv": "POP3-inloggning som {login} på {pop3} lyckades",
    },
    "pop3_login_failed": {
        "en": "POP3 login as {login} at {pop3} failed: {reply}",
        "sv": "POP3-inloggning som {login} på {pop3} misslyckades: {reply}",
    },
    "pop3_unreachable": {
        "en": "POP3 server {pop3} could not be used: {detail}",
        "sv": "POP3-servern {pop3} gick inte att använda: {detail}",
    },
    "pop3_no_credentials": {
        "en": "A POP3 server was given but no user name and password; "
        "POP-before-SMTP was not tried",
        "sv": "En POP3-server angavs men inget användarnamn och lösenord; "
        "POP före SMTP provades inte",
    },
    "works_with": {
        "en": "This works: port {port} with {security} and login",
        "sv": "Det här fungerar: port {port} med {security} och inloggning",
    },
    "outlook_error": {
        "en": "Mail program error number {number}: {meaning}",
        "sv": "E-postprogrammets felnummer {number}: {meaning}",
    },
    "client_port": {
        "en": "The mail program used port {port}, encryption: {secure}",
        "sv": "E-postprogrammet använde port {port}, kryptering: {secure}",
    },
    "server_reply": {"en": "Server reply: {reply}", "sv": "Serverns svar: {reply}"},
    "wording_of": {
        "en": "This wording is used by: {servers}",
        "sv": "Formuleringen används av: {servers}",
    },
    "reply_code": {
        "en": "Reply code {code}: {meaning}",
        "sv": "Svarskod {code}: {meaning}",
    },
    "stage_rcpt": {
        "en": "The refusal came when the recipient was given (after the sender was accepted)",
        "sv": "Nejet kom när mottagaren angavs (efter att avsändaren godtagits)",
    },
    "port25_no_ssl": {
        "en": "Port 25 without encryption is meant for servers talking to servers, "
        "not for mail programs",
        "sv": "Port 25 utan kryptering är till för servrar som pratar med servrar, "
        "inte för e-postprogram",
    },
}

# Outlook / Outlook Express / Windows Mail error numbers: number -> language -> meaning.
#
# Source (CLIENT_ERROR_SOURCES below): these numbers are the HRESULTs of
# Microsoft's Internet mail transport, the one behind Outlook Express, Windows
# Mail and Outlook's POP3/SMTP accounts. Microsoft documents the result
# structure that carries them ("IXPRESULT structure", hrResult: "the error
# code from the transport"; header Imnxport.h):
#   https://learn.microsoft.com/en-us/previous-versions/windows/desktop/oe/oe-ixpresult
# Imnxport.h (Windows SDK) defines each as IXP_E_<NAME> = HR_E(n) =
# MAKE_SCODE(SEVERITY_ERROR, FACILITY_INTERNET (12), n), i.e. 0x800C0000 | n;
# the constant's name is what the number means. Microsoft's support articles
# show the numbers in the dialog text the users paste, e.g. 0x800CCC0F:
#   https://support.microsoft.com/kb/935400
# Numbers of other Outlook components (0x8004210x and friends) are left out:
# no Microsoft document for them was found, and a guessed meaning would
# mislead; their dialog text is still read by its words.
CLIENT_ERRORS: dict[str, dict[str, str]] = {
    "0x800CCC79": {
        "en": "the server rejected one or more recipients (most often: relaying denied)",
        "sv": "servern vägrade en eller flera mottagare (oftast: vidarebefordran nekad)",
    },
    "0x800CCC78": {
        "en": "the server rejected the sender address",
        "sv": "servern vägrade avsändaradressen",
    },
    "0x800CCC7C": {
        "en": "the server wants STARTTLS before it takes mail (530)",
        "sv": "servern vill ha STARTTLS innan den tar emot post (530)",
    },
    "0x800CCC7D": {
        "en": "the mail program asked for STARTTLS but the server does not offer it",
        "sv": "e-postprogrammet bad om STARTTLS men servern erbjuder det inte",
    },
    "0x800CCC6E": {
        "en": "the server refused an address (553)",
        "sv": "servern vägrade en adress (553)",
    },
    "0x800CCC6D": {
        "en": "the server refused the message size (552)",
        "sv": "servern vägrade brevets storlek (552)",
    },
    "0x800CCC0E": {
        "en": "the mail program could not connect to the server",
        "sv": "e-postprogrammet kunde inte ansluta till servern",
    },
    "0x800CCC0F": {
        "en": "the connection was broken off before the server finished",
        "sv": "förbindelsen bröts innan servern var klar",
    },
    "0x800CCC0D": {"en": "the server name could not be found", "sv": "servernamnet hittades inte"},
    "0x800CCC19": {
        "en": "the server did not answer in time",
        "sv": "servern svarade inte i tid",
    },
    "0x800CCC1A": {
        "en": "the encrypted (SSL/TLS) connection could not be set up",
        "sv": "den krypterade (SSL/TLS) förbindelsen gick inte att upprätta",
    },
    "0x800CCC18": {
        "en": "the login was refused",
        "sv": "inloggningen nekades",
    },
    "0x800CCC92": {
        "en": "the POP3 server refused the password",
        "sv": "POP3-servern godtog inte lösenordet",
    },
}

# Number -> (the constant's name in Imnxport.h, where Microsoft documents it).
_IXP = "https://learn.microsoft.com/en-us/previous-versions/windows/desktop/oe/oe-ixpresult"
CLIENT_ERROR_SOURCES: dict[str, tuple[str, str]] = {
    "0x800CCC79": ("IXP_E_SMTP_REJECTED_RECIPIENTS", _IXP),
    "0x800CCC78": ("IXP_E_SMTP_REJECTED_SENDER", _IXP),
    "0x800CCC7C": ("IXP_E_SMTP_530_STARTTLS_REQUIRED", _IXP),
    "0x800CCC7D": ("IXP_E_SMTP_NO_STARTTLS_SUPPORT", _IXP),
    "0x800CCC6E": ("IXP_E_SMTP_553_MAILBOX_NAME_SYNTAX", _IXP),
    "0x800CCC6D": ("IXP_E_SMTP_552_STORAGE_OVERFLOW", _IXP),
    "0x800CCC0E": ("IXP_E_FAILED_TO_CONNECT", _IXP),
    "0x800CCC0F": ("IXP_E_CONNECTION_DROPPED", "https://support.microsoft.com/kb/935400"),
    "0x800CCC0D": ("IXP_E_CANT_FIND_HOST", _IXP),
    "0x800CCC19": ("IXP_E_TIMEOUT", _IXP),
    "0x800CCC1A": ("IXP_E_SECURE_CONNECT_FAILED", _IXP),
    "0x800CCC18": ("IXP_E_SICILY_LOGON_FAILED", _IXP),
    "0x800CCC92": ("IXP_E_POP3_INVALID_PASSWORD", _IXP),
}

LABELS: dict[str, dict[str, str]] = {
    "diagnosis": {"en": "Diagnosis", "sv": "Diagnos"},
    "meaning": {"en": "What this means", "sv": "Vad det betyder"},
    "advice": {"en": "What to change", "sv": "Vad du ska ändra"},
    "findings": {"en": "What was checked", "sv": "Vad som kontrollerades"},
    "transcript": {"en": "Conversation with the server", "sv": "Samtal med servern"},
    "accepted": {
        "en": "Result: the mail would be accepted",
        "sv": "Resultat: brevet skulle tas emot",
    },
    "refused": {
        "en": "Result: the mail would NOT be accepted",
        "sv": "Resultat: brevet skulle INTE tas emot",
    },
    "no_data": {
        "en": "(No message was sent: the check stops before DATA.)",
        "sv": "(Inget brev skickades: kontrollen stannar före DATA.)",
    },
    "starttls": {"en": "STARTTLS", "sv": "STARTTLS"},
    "ssl": {"en": "SSL/TLS", "sv": "SSL/TLS"},
    "no_encryption": {"en": "no encryption", "sv": "ingen kryptering"},
    "with_login": {"en": "with login", "sv": "med inloggning"},
    "without_login": {"en": "without login", "sv": "utan inloggning"},
    "accepted_short": {"en": "accepted", "sv": "godkänt"},
    "yes": {"en": "yes", "sv": "ja"},
    "no": {"en": "no", "sv": "nej"},
    "unknown": {"en": "unknown", "sv": "okänd"},
    "net_timeout": {"en": "no answer in time", "sv": "inget svar i tid"},
    "net_no_banner": {"en": "connected, but no greeting", "sv": "ansluten, men ingen hälsning"},
    "net_refused": {"en": "connection refused", "sv": "anslutningen vägrades"},
    "net_unreachable": {"en": "not reachable", "sv": "går inte att nå"},
    "net_dns": {"en": "server name not found", "sv": "servernamnet hittades inte"},
    "net_closed": {"en": "the server hung up", "sv": "servern lade på"},
    "net_tls": {"en": "encryption failed", "sv": "krypteringen misslyckades"},
    "net_starttls_unavailable": {"en": "STARTTLS not offered", "sv": "STARTTLS erbjuds inte"},
    "net_protocol": {"en": "not a mail server reply", "sv": "inget svar från en e-postserver"},
    "unknown_server": {"en": "(server not named)", "sv": "(servern namnges inte)"},
    "unknown_address": {"en": "(address not named)", "sv": "(adressen namnges inte)"},
    "unknown_login": {"en": "(your user name)", "sv": "(ditt användarnamn)"},
    "confidence": {"en": "How sure", "sv": "Hur säker"},
    "confidence_high": {
        "en": "sure: the server's own words say so",
        "sv": "säker: serverns egna ord säger det",
    },
    "confidence_medium": {
        "en": "fairly sure: the server's words are not known here, but the other clues agree",
        "sv": "ganska säker: serverns ord känns inte igen, men de andra ledtrådarna stämmer",
    },
    "confidence_low": {
        "en": "not sure: only one clue points to this",
        "sv": "osäker: bara en ledtråd pekar hit",
    },
    "reply_not_shown": {
        "en": "(the server's words are not in the pasted text)",
        "sv": "(serverns ord finns inte i den inklistrade texten)",
    },
    "code_permanent": {"en": "a permanent refusal", "sv": "ett bestående nej"},
    "code_temporary": {"en": "a temporary refusal", "sv": "ett tillfälligt nej"},
    "code_policy": {
        "en": "refused by the server's rules (permission or security)",
        "sv": "nekat av serverns regler (behörighet eller säkerhet)",
    },
    "code_address": {"en": "a problem with an address", "sv": "ett problem med en adress"},
    "alt_ports": {"en": "Port {ports} answers.", "sv": "Port {ports} svarar."},
    "relay_title": {
        "en": "Open relay test of {server} (as an outside client from {source})",
        "sv": "Test av öppet relä för {server} (som extern klient från {source})",
    },
    "relay_refused": {"en": "refused", "sv": "nekad"},
    "relay_accepted": {"en": "ACCEPTED: relay possible", "sv": "GODKÄND: relä möjligt"},
    "relay_local_ok": {
        "en": "accepted (local recipient, as expected)",
        "sv": "godkänd (lokal mottagare, som väntat)",
    },
    "relay_ambiguous": {
        "en": "accepted: relays only if the server treats {mark} as routing; "
        "check where it delivers",
        "sv": "godkänd: reläar bara om servern tolkar {mark} som routning; "
        "kontrollera vart den levererar",
    },
    "relay_error": {"en": "could not test: {detail}", "sv": "kunde inte testas: {detail}"},
    "relay_summary_open": {
        "en": "OPEN RELAY: {count} of {total} tricks were accepted. Anyone can "
        "send spam through this server.",
        "sv": "ÖPPET RELÄ: {count} av {total} knep godtogs. Vem som helst kan "
        "skicka spam genom den här servern.",
    },
    "relay_summary_closed": {
        "en": "Not an open relay: none of {total} tricks was accepted.",
        "sv": "Inget öppet relä: inget av {total} knep godtogs.",
    },
    "relay_inconclusive": {"en": "Inconclusive: {detail}", "sv": "Inget säkert resultat: {detail}"},
    "relay_ambiguous_summary": {
        "en": "{count} local-looking address(es) with routing characters "
        "were accepted; make sure they are delivered locally.",
        "sv": "{count} lokalt utseende adress(er) med routningstecken "
        "godtogs; kontrollera att de levereras lokalt.",
    },
    # The help page (postvakt.web) and the documents it hands to mail programs.
    "web_title": {"en": "Why can't I send?", "sv": "Varför kan jag inte skicka?"},
    "web_description": {
        "en": "Paste the error your mail program showed and read what it means and what to change.",
        "sv": "Klistra in felet som e-postprogrammet visade och läs vad det betyder och vad du ska "
        "ändra.",
    },
    "web_intro": {
        "en": "Paste the error message your mail program showed. The explanation says what it "
        "means and the one setting to change. Nothing you paste is stored.",
        "sv": "Klistra in felmeddelandet som e-postprogrammet visade. Förklaringen säger vad det "
        "betyder och vilken inställning du ska ändra. Inget du klistrar in sparas.",
    },
    "web_language": {"en": "Language", "sv": "Språk"},
    "web_error_label": {"en": "The error message", "sv": "Felmeddelandet"},
    "web_error_hint": {
        "en": "Copy the whole message, with numbers such as 550 or 0x800CCC79.",
        "sv": "Kopiera hela meddelandet, med siffror som 550 eller 0x800CCC79.",
    },
    "web_submit": {"en": "Explain the error", "sv": "Förklara felet"},
    "web_result": {"en": "Explanation", "sv": "Förklaring"},
    "web_change_this": {"en": "Change this", "sv": "Ändra det här"},
    "web_also": {"en": "Also worth trying", "sv": "Också värt att prova"},
    "web_case_id": {
        "en": "For the helpdesk: case {case}",
        "sv": "För supporten: fall {case}",
    },
    "web_settings": {
        "en": "The right settings for {domain}",
        "sv": "Rätt inställningar för {domain}",
    },
    "web_settings_intro": {
        "en": "Thunderbird, Outlook, Apple Mail, K-9 Mail and FairEmail find these by themselves "
        "when you type in your address.",
        "sv": "Thunderbird, Outlook, Apple Mail, K-9 Mail och FairEmail hittar dem själva när du "
        "skriver in din adress.",
    },
    "web_outgoing": {"en": "Outgoing mail (SMTP)", "sv": "Utgående post (SMTP)"},
    "web_incoming": {"en": "Incoming mail (POP3)", "sv": "Inkommande post (POP3)"},
    "web_server": {"en": "Server", "sv": "Server"},
    "web_port": {"en": "Port", "sv": "Port"},
    "web_security": {"en": "Connection security", "sv": "Anslutningssäkerhet"},
    "web_username": {"en": "User name", "sv": "Användarnamn"},
    "web_username_value": {
        "en": "your whole e-mail address",
        "sv": "hela din e-postadress",
    },
    "web_login": {"en": "Login", "sv": "Inloggning"},
    "web_login_value": {
        "en": "on, with the same password as for incoming mail",
        "sv": "på, med samma lösenord som för inkommande post",
    },
    "web_or": {"en": "or", "sv": "eller"},
    "web_no_secure_send": {
        "en": "This server offers no secure way to send mail yet, so no settings are shown: ask "
        "the provider.",
        "sv": "Den här servern erbjuder ännu inget säkert sätt att skicka post, så inga "
        "inställningar visas: fråga leverantören.",
    },
    "web_no_incoming": {
        "en": "This server offers no way to fetch mail, so no settings are shown.",
        "sv": "Den här servern erbjuder inget sätt att hämta post, så inga inställningar visas.",
    },
    "web_check_title": {"en": "Check my connection", "sv": "Kontrollera min anslutning"},
    "web_check_intro": {
        "en": "Asks this server (and no other) what it knows about the address you connect from.",
        "sv": "Frågar den här servern (och ingen annan) vad den vet om adressen du ansluter från.",
    },
    "web_check_submit": {"en": "Check", "sv": "Kontrollera"},
    "web_check_ip": {
        "en": "Your address, as this server sees it: {ip}",
        "sv": "Din adress, som den här servern ser den: {ip}",
    },
    "web_check_network_yes": {
        "en": "It is in the provider's own network: sending works from here even without login.",
        "sv": "Den finns i leverantörens eget nät: att skicka fungerar härifrån även utan "
        "inloggning.",
    },
    "web_check_network_no": {
        "en": "It is not in the provider's own network.",
        "sv": "Den finns inte i leverantörens eget nät.",
    },
    "web_check_client_yes": {
        "en": "It is on the provider's list of addresses allowed to send.",
        "sv": "Den står på leverantörens lista över adresser som får skicka.",
    },
    "web_check_pop_yes": {
        "en": "A POP3 login from this address lets you send without login for {minutes} more "
        "minutes.",
        "sv": "En POP3-inloggning från den här adressen låter dig skicka utan inloggning i "
        "{minutes} minuter till.",
    },
    "web_check_pop_no": {
        "en": "No POP3 login from this address in the last {minutes} minutes.",
        "sv": "Ingen POP3-inloggning från den här adressen de senaste {minutes} minuterna.",
    },
    "web_check_needs_login": {
        "en": 'From here, sending needs login: turn on "My outgoing server (SMTP) requires '
        'authentication" and use the outgoing settings above.',
        "sv": 'Härifrån kräver det inloggning att skicka: slå på "Servern för utgående e-post '
        '(SMTP) kräver autentisering" och använd inställningarna för utgående post ovan.',
    },
    "web_check_works": {
        "en": "From here, sending works even without login (login is still the safer setting).",
        "sv": "Härifrån fungerar det att skicka även utan inloggning (inloggning är ändå den "
        "säkrare inställningen).",
    },
    "web_profile_title": {"en": "iPhone, iPad and Mac", "sv": "iPhone, iPad och Mac"},
    "web_profile_intro": {
        "en": "Download a profile that sets up Apple Mail for you; the device asks for your "
        "password.",
        "sv": "Ladda ner en profil som ställer in Apple Mail åt dig; enheten frågar efter ditt "
        "lösenord.",
    },
    "web_email_label": {"en": "Your e-mail address", "sv": "Din e-postadress"},
    "web_profile_submit": {"en": "Download profile", "sv": "Ladda ner profilen"},
    "web_autoconfig_doc": {
        "en": "Settings and explanations of sending errors",
        "sv": "Inställningar och förklaringar av fel vid sändning",
    },
    "web_profile_descr": {
        "en": "Mail settings for {email}",
        "sv": "E-postinställningar för {email}",
    },
    "web_bad_form": {
        "en": "The form could not be used (it may be too old). Reload the page and try again.",
        "sv": "Formuläret gick inte att använda (det kan vara för gammalt). Ladda om sidan och "
        "försök igen.",
    },
    "web_too_many": {
        "en": "Too many requests from your address; wait a minute and try again.",
        "sv": "För många förfrågningar från din adress; vänta en minut och försök igen.",
    },
}


def _resolve(value: Any, lang: str) -> Any:
    if isinstance(value, str) and value.startswith("@"):
        if value[1:] in LABELS:
            return label(value[1:], lang)
        if value.startswith("@err"):
            return client_error_meaning(value[4:], lang) or value[4:]
    return value


class _Keep(dict[str, Any]):
    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


def fmt(template: str, params: dict[str, Any]) -> str:
    return string.Formatter().vformat(template, (), _Keep(params))


def _pick(entry: dict[str, Any], lang: str) -> Any:
    return entry.get(lang) or entry[DEFAULT_LANGUAGE]


def localise(params: dict[str, Any], lang: str) -> dict[str, Any]:
    """Values written "@key" are labels (or "@err<number>" client error meanings), translated here."""
    return {k: _resolve(v, lang) for k, v in params.items()}


def _alt(params: dict[str, Any], lang: str) -> str:
    """The sentence naming the ports that do answer, when the chosen one does not."""
    ports = params.get("open_ports")
    if not isinstance(ports, list) or not ports:
        return ""
    return label("alt_ports", lang, ports=", ".join(map(str, ports)))


def case_text(case: str, lang: str, params: dict[str, Any]) -> CaseText:
    t: CaseText = _pick(CASES[case], lang)
    params = {"alt": _alt(params, lang), **localise(params, lang)}
    return CaseText(
        fmt(t.title, params), fmt(t.explanation, params), tuple(fmt(a, params) for a in t.advice)
    )


def finding_text(finding: str, lang: str, params: dict[str, Any]) -> str:
    return fmt(_pick(FINDINGS[finding], lang), localise(params, lang))


def label(key: str, lang: str, **params: Any) -> str:
    return fmt(_pick(LABELS[key], lang), params)


def client_error_meaning(number: str, lang: str) -> str | None:
    entry = CLIENT_ERRORS.get(number.upper().replace("0X", "0x"))
    return _pick(entry, lang) if entry else None
