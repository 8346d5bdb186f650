"""The two Dovecot majors the suite runs against, and everything that differs between them.

* 2.3: Debian 12's packages, installed on this machine.
* 2.4: Debian 13's packages, in a minimal Debian 13 root (``scripts/debian13-root``) entered with
  ``chroot``. Loopback is shared, so that Dovecot calls the service running here.

Each build's Dovecot gets a copy of its own system's stock ``/etc/dovecot`` with the project's
shipped file for that major copied into ``conf.d/`` (only the URL, the API secret and the nonce
changed), and the test's site settings in ``local.conf``, which the stock ``dovecot.conf``
includes last.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = {"2.3": ROOT / "conf" / "dovecot-2.3.conf", "2.4": ROOT / "dovecot-example.conf"}
NONCE = "e2e-nonce-0123456789abcdef"


def install_shipped(major: str, url: str, api_header_value: str) -> str:
    """The shipped file for ``major`` with exactly the URL, the API secret and the nonce set."""
    text = SHIPPED[major].read_text(encoding="utf-8")
    edits = (
        (r"^auth_policy_server_url = .*$", f"auth_policy_server_url = {url}"),
        (
            r"^auth_policy_server_api_header = X-API-Key: change-me$",
            f"auth_policy_server_api_header = {api_header_value}",
        ),
        (r"^auth_policy_hash_nonce = .*$", f"auth_policy_hash_nonce = {NONCE}"),
    )
    for pattern, replacement in edits:
        text, count = re.subn(pattern, replacement, text, flags=re.MULTILINE)
        assert count == 1, f"{SHIPPED[major].name}: expected one line matching {pattern}"
    return text


@dataclass(frozen=True)
class Scenario:
    """What a scenario changes on the Dovecot side, after the shipped file."""

    api_header: str | None = None  # another auth_policy_server_api_header
    checks: bool = False  # both allow checks on
    timeout_ms: int | None = None
    extra_attributes: tuple[tuple[str, str], ...] = ()
    auth_debug: bool = False


@dataclass(frozen=True)
class DovecotBuild:
    """One Dovecot major: where its binaries are, and how its settings are written."""

    major: str
    root: Path | None  # a Debian root entered with chroot, or None for this machine

    @property
    def name(self) -> str:
        return f"dovecot-{self.major}"

    def host_path(self, inner: Path) -> Path:
        """Where a path that Dovecot sees is, from here."""
        return inner if self.root is None else self.root / inner.relative_to("/")

    def inner_path(self, host: Path) -> Path:
        """The path Dovecot sees for a path under this build's root."""
        if self.root is None:
            return host
        return Path("/") / host.relative_to(self.root)

    def command(self, *args: str) -> list[str]:
        """A command line that runs one of this build's programs."""
        if self.root is None:
            return [shutil.which(args[0]) or args[0], *args[1:]]
        return ["chroot", str(self.root), *args]

    def stock_config(self) -> Path:
        return self.host_path(Path("/etc/dovecot"))

    def work_parent(self) -> Path:
        """Where a test's directories go: inside the root for a chroot build."""
        if self.root is None:
            return Path("/tmp")
        parent = self.root / "srv"
        parent.mkdir(exist_ok=True)
        return parent

    def version(self) -> str:
        run = subprocess.run(
            self.command("dovecot", "--version"), capture_output=True, text=True, timeout=30
        )
        return run.stdout.strip()

    # --- settings that differ between the majors -------------------------------------------

    def site_settings(self, directory: Path, users: Path, ports: dict[str, int]) -> str:
        """What a test's own site needs: private paths, ports, passwd-file users, no TLS."""
        d = self.inner_path(directory)
        u = self.inner_path(users)
        common = f"""
base_dir = {d}/run
state_dir = {d}/state
log_path = {d}/dovecot.log
protocols = imap pop3 submission
listen = 127.0.0.1
ssl = no
auth_mechanisms = plain login
login_trusted_networks = 127.0.0.0/8 ::1/128
auth_failure_delay = 0
auth_verbose = yes
hostname = localhost
submission_relay_host = 127.0.0.1
"""
        # 2.4's stock 10-master.conf declares a submissions listener that 2.3's does not
        submissions = "  inet_listener submissions {\n    port = 0\n  }\n"
        if self.major == "2.3":
            submissions = ""
        services = f"""
service imap-login {{
  inet_listener imap {{
    port = {ports["imap"]}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service pop3-login {{
  inet_listener pop3 {{
    port = {ports["pop3"]}
  }}
  inet_listener pop3s {{
    port = 0
  }}
}}
service submission-login {{
  inet_listener submission {{
    port = {ports["submission"]}
  }}
{submissions}}}
"""
        if self.major == "2.3":
            auth = f"""
disable_plaintext_auth = no
mail_location = maildir:{d}/mail/%u
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {u}
}}
userdb {{
  driver = static
  args = uid=65534 gid=65534 home={d}/mail/%u
}}
"""
        else:
            auth = f"""
auth_allow_cleartext = yes
mail_driver = maildir
mail_path = {d}/mail/%{{user}}
mail_home = {d}/mail/%{{user}}
passdb passwd-file {{
  passwd_file_path = {u}
}}
userdb static {{
  fields {{
    uid = 65534
    gid = 65534
    home = {d}/mail/%{{user}}
  }}
}}
"""
        return common + auth + services

    def scenario_settings(self, scenario: Scenario) -> str:
        lines: list[str] = []
        if scenario.api_header is not None:
            lines.append(f"auth_policy_server_api_header = {scenario.api_header}")
        if scenario.checks:
            lines += ["auth_policy_check_before_auth = yes", "auth_policy_check_after_auth = yes"]
        if scenario.auth_debug:
            lines.append("auth_debug = yes")
        if scenario.timeout_ms is not None:
            if self.major == "2.3":
                lines.append(f"auth_policy_server_timeout_msecs = {scenario.timeout_ms}")
            else:
                lines.append(
                    "auth_policy {\n"
                    f"  http_client_request_absolute_timeout = {scenario.timeout_ms}ms\n}}"
                )
        if scenario.extra_attributes:
            if self.major == "2.3":
                # a string: the whole list again, with the extra keys after the shipped ones
                shipped = shipped_attributes_23()
                extra = " ".join(f"{k}={v}" for k, v in scenario.extra_attributes)
                lines.append(f"auth_policy_request_attributes = {shipped} {extra}")
            else:
                # a string list: a second block adds to the shipped one
                body = "".join(f"  {k} = {v}\n" for k, v in scenario.extra_attributes)
                lines.append(f"auth_policy_request_attributes {{\n{body}}}")
        return "\n".join(lines) + "\n"

    def policy_log_lines(self, log: str, user: str) -> list[str]:
        """The auth process's policy log lines for ``user``."""
        if self.major == "2.3":
            return [line for line in log.splitlines() if f"policy({user}," in line]
        return [
            line for line in log.splitlines() if f"auth({user}," in line and ": policy: " in line
        ]


def shipped_attributes_23() -> str:
    for line in SHIPPED["2.3"].read_text(encoding="utf-8").splitlines():
        if line.startswith("auth_policy_request_attributes = "):
            return line.split(" = ", 1)[1]
    raise AssertionError("conf/dovecot-2.3.conf has no auth_policy_request_attributes")


def copy_stock_config(build: DovecotBuild, target: Path) -> None:
    """A copy of the build's stock /etc/dovecot whose system passdb (PAM) is left out.

    The tests log in with passwd-file users, as a site using passwd-file does: it comments out
    the ``!include auth-system.conf.ext`` line of conf.d/10-auth.conf, as the file itself says.
    """
    shutil.copytree(build.stock_config(), target, symlinks=True)
    # Dovecot 2.3 reads "ssl_cert = </file" while parsing, even with ssl = no; the snakeoil
    # certificate comes with ssl-cert, which Debian only recommends. The tests use no TLS.
    tls = target / "conf.d" / "10-ssl.conf"
    lines = tls.read_text(encoding="utf-8").splitlines(keepends=True)
    for i, line in enumerate(lines):
        match = re.match(r"^ssl_\w+ = <(\S+)$", line.strip())
        if match and not build.host_path(Path(match.group(1))).exists():
            lines[i] = "#" + line
    tls.write_text("".join(lines), encoding="utf-8")
    auth = target / "conf.d" / "10-auth.conf"
    text = auth.read_text(encoding="utf-8")
    text, count = re.subn(r"^!include auth-system\.conf\.ext$", "#\\g<0>", text, flags=re.M)
    assert count == 1, f"{auth}: no '!include auth-system.conf.ext' line"
    auth.write_text(text, encoding="utf-8")


def host_build() -> DovecotBuild | str:
    """Dovecot 2.3 on this machine, or why there is none."""
    if shutil.which("dovecot") is None or shutil.which("doveadm") is None:
        return (
            "dovecot, doveadm not installed (Debian 12: dovecot-imapd dovecot-pop3d "
            "dovecot-submissiond)"
        )
    build = DovecotBuild("2.3", None)
    if not build.version().startswith("2.3"):
        return f"this machine's Dovecot is {build.version()}, not 2.3"
    if not Path("/etc/dovecot/conf.d/10-auth.conf").exists():
        return "this machine's Dovecot has no stock /etc/dovecot"
    return build


def debian13_build() -> DovecotBuild | str:
    """Dovecot 2.4 in the Debian 13 root, or why there is none."""
    if os.geteuid() != 0:
        return "the Debian 13 root is entered with chroot, which needs root"
    run = subprocess.run(
        [str(ROOT / "scripts" / "debian13-root"), "--check"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if run.returncode != 0:
        return "no Debian 13 root with Dovecot 2.4 (scripts/debian13-root builds it, as root)"
    build = DovecotBuild("2.4", Path(run.stdout.strip()))
    if not build.version().startswith("2.4"):
        return f"the Debian 13 root's Dovecot is {build.version()!r}, not 2.4"
    return build
