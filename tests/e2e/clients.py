"""Mail clients that log in to Dovecot as a chosen client address.

From a trusted network (``login_trusted_networks``) Dovecot takes the client address from IMAP
``ID ("x-originating-ip" …)``, POP3 and submission ``XCLIENT ADDR=…``, the ``rip=`` of an auth
socket request (as Postfix sends it), or ``doveadm auth test -x rip=…``.
"""

from __future__ import annotations

import base64
import imaplib
import poplib
import smtplib
import socket
import subprocess
from pathlib import Path

from harness import Dovecot


def imap_login(
    port: int, user: str, password: str, address: str | None, program: str = '"name" "e2e-client"'
) -> bool:
    """Log in over IMAP; True when Dovecot accepted the credentials. ``program`` is the rest of
    the ID command's list after the forwarded address: the mail program Dovecot passes on."""
    client = imaplib.IMAP4("127.0.0.1", port, timeout=10)
    try:
        if address is not None:
            typ, _ = client.xatom("ID", f'("x-originating-ip" "{address}" {program})')
            assert typ == "OK", typ
        try:
            typ, _ = client.login(user, password)
        except imaplib.IMAP4.error:
            return False
        return typ == "OK"
    finally:
        try:
            client.logout()
        except (imaplib.IMAP4.error, OSError):
            client.shutdown()


def pop3_login(port: int, user: str, password: str, address: str) -> bool:
    client = poplib.POP3("127.0.0.1", port, timeout=10)
    try:
        # poplib has no public call for an arbitrary one-line command such as XCLIENT
        reply = client._shortcmd(f"XCLIENT ADDR={address}")  # type: ignore[attr-defined]
        assert reply.startswith(b"+OK"), reply
        client.user(user)
        try:
            client.pass_(password)
        except poplib.error_proto:
            return False
        return True
    finally:
        try:
            client.quit()
        except (poplib.error_proto, OSError):
            client.close()


def submission_login(port: int, user: str, password: str, address: str) -> bool:
    client = smtplib.SMTP("127.0.0.1", port, timeout=10)
    try:
        client.ehlo("e2e.example")
        code, text = client.docmd("XCLIENT", f"ADDR={address}")
        assert code == 220, (code, text)  # a fresh greeting, as after a new connection
        client.ehlo("e2e.example")
        try:
            client.login(user, password)
        except smtplib.SMTPAuthenticationError:
            return False
        return True
    finally:
        try:
            client.quit()
        except (smtplib.SMTPException, OSError):
            client.close()


def postfix_sasl_auth(base_dir: Path, user: str, password: str, address: str) -> bool:
    """SMTP AUTH the way Postfix's smtpd asks Dovecot (``smtpd_sasl_type = dovecot``)."""
    resp = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(str(base_dir / "auth-client"))
        sock.sendall(b"VERSION\t1\t2\nCPID\t4242\n")
        buffer = b""
        while b"DONE\n" not in buffer:
            chunk = sock.recv(4096)
            assert chunk, "auth socket closed during handshake"
            buffer += chunk
        sock.sendall(
            f"AUTH\t1\tPLAIN\tservice=smtp\tnologin\tlip=127.0.0.1\trip={address}\tsecured\tresp={resp}\n".encode()
        )
        reply = b""
        while b"\n" not in reply:
            chunk = sock.recv(4096)
            assert chunk, "auth socket closed before the reply"
            reply += chunk
    return reply.startswith(b"OK\t1")


def doveadm_auth_test(
    dovecot: Dovecot, user: str, password: str, address: str, service: str | None = None
) -> bool:
    """``doveadm auth test``: the full policy cycle with no network client at all."""
    extra = ["-x", f"service={service}"] if service else []
    auth_socket = dovecot.inner(dovecot.base_dir / "auth-client")
    args = ["auth", "test", "-a", auth_socket, *extra, "-x", f"rip={address}", user, password]
    run = subprocess.run(
        dovecot.command("doveadm", *args),
        capture_output=True,
        text=True,
        timeout=30,
    )
    return run.returncode == 0 and "succeeded" in run.stdout
