"""Turning a notice into the text an account owner reads, in their language.

Templates are whole files, per language: ``<lang>/notice.txt`` (the body of an e-mail, the
``message`` of a webhook), ``<lang>/subject.txt`` (an e-mail subject, one line) and
``<lang>/sms.txt`` (the short text of an SMS). Only ``notice.txt`` is required: without the
others the subject is the body's first line and the SMS is the body. An admin's
``message.templates_dir`` is searched first, then the templates shipped with the package, so an
override dir may replace a single file of a shipped language or add a new language.
"""

from __future__ import annotations

import importlib.resources
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import jinja2
import jinja2.meta
from babel import Locale, UnknownLocaleError
from babel.core import get_global
from babel.dates import format_datetime, format_timedelta, get_timezone_location
from babel.numbers import format_decimal

from ..client import Client
from ..config import Config, MessageConfig, WebConfig
from ..model import Notice, Reason, Recipient, Travel
from ..web.tokens import NoticeLinks, links

TEMPLATE_FILE = "notice.txt"
SUBJECT_FILE = "subject.txt"
SMS_FILE = "sms.txt"
TEMPLATE_FILES = (TEMPLATE_FILE, SUBJECT_FILE, SMS_FILE)
FALLBACK_LANGUAGE = "en"
TIME_FORMAT = "yyyy/MM/dd HH:mm:ss"

PROTOCOL_LABELS = {
    "imap": "IMAP",
    "pop3": "POP3",
    # to the account owner, sending mail is SMTP whichever port or daemon took it
    "smtp": "SMTP",
    "submission": "SMTP",
    "sieve": "ManageSieve",
    "managesieve": "ManageSieve",
    "lmtp": "LMTP",
}

TEMPLATE_VARIABLES = frozenset(
    {
        "service_name",
        "protocols",
        "time",
        "tz_label",
        "country_name",
        "country",
        "help_url",
        "login",
        "reasons",
        "as_org",
        "asn",
        "earlier",
        "network",
        "network_label",
        # the mail program its IMAP ID named ("Thunderbird 128"), "" when unknown
        "client",
        # impossible_travel (else None): the journey from the previous login's place to this
        # one's (country_name): from_country, from_country_name, km ("10,123"), hours ("2.5")
        # and minutes (an int when under an hour, else None)
        "travel",
        # many_origins (else []): the places of the account's logins in the window, each with
        # country, country_name, provider ("Example Networks AS64500", None when unknown) and
        # current (this notice's login)
        "spread",
        # [compromise] window_s in words ("1時間"; "hour", "30 minutes" in English)
        "window",
        # the owner's links ("" when [web] has none): both answers, and the page with both
        "confirm_url",
        "deny_url",
        "page_url",
    }
)


@dataclass(frozen=True, slots=True)
class RenderedMessage:
    """A notice as one recipient reads it: e-mail subject and body, SMS text, language used,
    the notices folded into it (oldest first), for channels that name them as data, and the
    owner's links (None when ``[web]`` has none), for channels that carry them as data."""

    subject: str
    body: str
    short: str
    language: str
    folded: tuple[Notice, ...] = ()
    links: NoticeLinks | None = None


# What check() renders: each sample alone, then the first with the others folded into it, for
# a recipient in another time zone.
SAMPLE_RECIPIENT = Recipient("user@example.jp", None, "America/New_York")

# What check() renders: one origin fully resolved and one not, since templates branch on unknowns.
SAMPLE_NOTICES = (
    Notice(
        id="sample-resolved",
        account="user@example.jp",
        login="user@example.jp",
        reasons=(Reason.NEW_COUNTRY, Reason.NEW_PROVIDER),
        protocol="imap",
        remote="203.0.113.7",
        time=datetime(2020, 3, 10, 20, 12, 44, tzinfo=UTC),
        country="JP",
        asn=64500,
        as_org="Example Networks",
        prefix="203.0.113.0/24",
        protocols=("smtp", "imap"),
        client=Client("Thunderbird", "128.3.0"),
    ),
    Notice(
        id="sample-network",
        account="user@example.jp",
        login="user@example.jp",
        reasons=(Reason.VIA_VPN,),
        protocol="imap",
        remote="192.0.2.20",
        time=datetime(2020, 3, 10, 22, 0, 0, tzinfo=UTC),
        country="US",
        asn=64510,
        as_org="Example VPN",
        prefix="192.0.2.0/24",
        network="vpn",
        network_label="Example VPN",
    ),
    Notice(
        id="sample-unresolved",
        account="user@example.jp",
        login="user@example.jp",
        reasons=(Reason.FIRST_USE,),
        protocol="submission",
        remote="198.51.100.20",
        time=datetime(2020, 3, 10, 21, 0, 0, tzinfo=UTC),
        country=None,
        asn=None,
        as_org=None,
        prefix="198.51.100.0/24",
    ),
    Notice(
        id="sample-travel",
        account="user@example.jp",
        login="user@example.jp",
        reasons=(Reason.NEW_COUNTRY, Reason.NEW_CLIENT, Reason.IMPOSSIBLE_TRAVEL),
        protocol="imap",
        remote="203.0.113.80",
        time=datetime(2020, 3, 10, 23, 0, 0, tzinfo=UTC),
        country="BR",
        asn=64520,
        as_org="Example Telecom",
        prefix="203.0.113.0/24",
        client=Client("Outlook", "16.0"),
        travel=Travel("JP", 17400.4, 2.5),
    ),
    Notice(
        id="sample-spread",
        account="user@example.jp",
        login="user@example.jp",
        reasons=(Reason.NEW_PROVIDER, Reason.IMPOSSIBLE_TRAVEL, Reason.MANY_ORIGINS),
        protocol="submission",
        remote="198.51.100.30",
        time=datetime(2020, 3, 10, 23, 30, 0, tzinfo=UTC),
        country="JP",
        asn=64530,
        as_org="Example Cloud",
        prefix="198.51.100.0/24",
        # an unknown previous country, less than an hour
        travel=Travel(None, 900.0, 0.4),
        spread=("?? unknown", "JP AS64530", "US AS64510", "DE org:Example Org"),
    ),
)


class TemplateError(ValueError):
    """Templates that cannot be used; ``problems`` lists each one, naming its file."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


def protocol_label(protocol: str) -> str:
    """How a Dovecot protocol name is shown to an account owner."""
    name = protocol.strip().lower()
    return PROTOCOL_LABELS.get(name, name.upper())


def protocol_labels(protocols: Iterable[str]) -> str:
    """Labels of several protocols joined by "/", each once, in first-seen order."""
    labels = dict.fromkeys(protocol_label(p) for p in protocols if p.strip())
    return "/".join(labels)


def timezone_label(tz: ZoneInfo, when: datetime, locale: Locale) -> str:
    """How the time zone of the access time is named: by its place, as people know it.

    Zones that belong to no territory (UTC, Etc/GMT+9) have no place; Babel would call them an
    "Unknown Region", which reads like a warning, so they get their own name instead.
    """
    canonical = get_global("zone_aliases").get(tz.key, tz.key)
    if get_global("zone_territories").get(canonical, "ZZ") not in ("ZZ", "001"):
        return get_timezone_location(tz, locale=locale)
    return format_datetime(when, "zzzz", tzinfo=tz, locale=locale)


def _language_key(language: str) -> str:
    return language.strip().replace("-", "_").lower()


def _babel_locale(language: str) -> Locale:
    try:
        return Locale.parse(language.replace("-", "_"))
    except (UnknownLocaleError, ValueError, TypeError):
        # a custom language dir Babel has no data for still gets readable dates and names
        return Locale.parse(FALLBACK_LANGUAGE)


def _first_line(text: str) -> str:
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    return ""


def _language_dirs(root: Traversable) -> set[str]:
    """Names of the subdirectories of ``root`` that hold a template."""
    return {
        entry.name
        for entry in root.iterdir()
        if entry.is_dir() and entry.joinpath(TEMPLATE_FILE).is_file()
    }


class Renderer:
    """Renders notices with Jinja2 templates, a set of files per language.

    Construction loads and compiles every template, checks that each uses only the known
    variables, and renders sample notices in every language; any problem raises
    :class:`TemplateError` listing them all, so a broken override dir stops the service (and
    ``check-config``) at startup instead of failing deliveries later. :meth:`check` repeats the
    trial render and returns the problems as a list.

    ``web`` gives the owner's links (``confirm_url``, ``deny_url``, ``page_url``); without it, or
    when it has no ``public_url`` and ``secret``, they are empty.
    """

    def __init__(
        self, config: MessageConfig, web: WebConfig | None = None, window_s: float = 3600.0
    ) -> None:
        self._config = config
        self._web = web
        # [compromise] window_s: the time many_origins counted places in
        self._window_s = window_s
        self._tz = ZoneInfo(config.timezone)
        package_root = importlib.resources.files("policy_server.delivery").joinpath("templates")
        loaders: list[jinja2.BaseLoader] = []
        languages = _language_dirs(package_root)
        if config.templates_dir:
            override = Path(config.templates_dir)
            if not override.is_dir():
                raise TemplateError([f"templates_dir {override} is not a directory"])
            loaders.append(jinja2.FileSystemLoader(override, encoding="utf-8"))
            languages |= _language_dirs(override)
        loaders.append(jinja2.PackageLoader("policy_server.delivery", "templates"))

        self._languages = {_language_key(lang): lang for lang in sorted(languages)}
        default = self._languages.get(_language_key(config.language))
        if default is None:
            raise TemplateError(
                [
                    f"message.language {config.language!r}: no {config.language}/{TEMPLATE_FILE} "
                    f"(languages available: {', '.join(sorted(languages)) or 'none'})"
                ]
            )
        self._default = default

        loader = jinja2.ChoiceLoader(loaders)
        self._env = jinja2.Environment(
            loader=loader,
            undefined=jinja2.StrictUndefined,
            # the output is plain text (SMS, e-mail, a JSON string), never HTML: escaping would
            # put "&amp;" into a customer's message
            autoescape=False,  # noqa: S701
            keep_trailing_newline=True,
            trim_blocks=True,
            lstrip_blocks=True,
            # templates are compiled once here and checked; a file edited later must not change
            # what a running service sends without passing the same checks
            auto_reload=False,
        )
        # (language, file) -> template; subject.txt and sms.txt may be absent
        self._templates: dict[tuple[str, str], jinja2.Template] = {}
        self._locales: dict[str, Locale] = {}
        problems: list[str] = []
        for lang in self._languages.values():
            self._locales[lang] = _babel_locale(lang)
            for file in TEMPLATE_FILES:
                problem = self._load(loader, lang, file)
                if problem:
                    problems.append(problem)
        if not problems:
            problems = self.check()
        if problems:
            raise TemplateError(problems)

    def _load(self, loader: jinja2.BaseLoader, lang: str, file: str) -> str | None:
        """Compile ``lang/file`` into ``self._templates``; a problem's text, or None."""
        name = f"{lang}/{file}"
        try:
            source, filename, _ = loader.get_source(self._env, name)
        except jinja2.TemplateNotFound:
            return None if file != TEMPLATE_FILE else f"{name}: missing"
        except (OSError, UnicodeDecodeError) as exc:
            return f"{name}: cannot load: {exc}"
        try:
            unknown = (
                jinja2.meta.find_undeclared_variables(self._env.parse(source, name, filename))
                - TEMPLATE_VARIABLES
                - set(self._env.globals)
            )
            self._templates[(lang, file)] = self._env.get_template(name)
        except jinja2.TemplateSyntaxError as exc:
            return f"{exc.filename or name}:{exc.lineno}: syntax error: {exc.message}"
        except (jinja2.TemplateError, OSError, UnicodeDecodeError) as exc:
            return f"{name}: cannot load: {exc}"
        if unknown:
            return (
                f"{filename or name}: unknown variable(s) {', '.join(sorted(unknown))}; "
                f"known: {', '.join(sorted(TEMPLATE_VARIABLES))}"
            )
        return None

    @property
    def languages(self) -> list[str]:
        """The languages a notice can be rendered in."""
        return sorted(self._languages.values())

    @property
    def default_language(self) -> str:
        return self._default

    def resolve_language(self, language: str | None) -> str:
        """The available language used for a requested one.

        ``ja-JP`` finds ``ja``; an unknown or missing language gets the configured default
        (which construction made sure exists, so English is never needed as a last resort).
        """
        if language:
            key = _language_key(language)
            for candidate in (key, key.partition("_")[0]):
                if candidate in self._languages:
                    return self._languages[candidate]
        return self._default

    def _zone(self, recipient: Recipient | None) -> ZoneInfo:
        if recipient is not None and recipient.timezone:
            try:
                return ZoneInfo(recipient.timezone)
            except (ZoneInfoNotFoundError, ValueError):
                pass
        return self._tz

    def variables(
        self,
        notice: Notice,
        language: str,
        recipient: Recipient | None = None,
        folded: Sequence[Notice] = (),
        owner_links: NoticeLinks | None = None,
    ) -> dict[str, Any]:
        """What a template sees for ``notice`` in ``language``.

        Times are in the recipient's time zone when the account has one, else in
        ``message.timezone``. ``earlier`` lists the notices folded into this one (held back by
        the per-account limit), oldest first, each with ``time``, ``country_name``,
        ``country`` and ``protocols``. ``owner_links`` saves computing the links again (they
        are the notice's own, not the folded ones').
        """
        if owner_links is None:
            owner_links = self.links(notice)
        locale = self._locales.get(language) or _babel_locale(language)
        tz = self._zone(recipient)
        when = _aware(notice.time)
        country = notice.country.upper() if notice.country else None
        earlier = [
            {
                "time": format_datetime(_aware(other.time), TIME_FORMAT, tzinfo=tz, locale=locale),
                "country": other.country.upper() if other.country else None,
                "country_name": (
                    locale.territories.get(other.country.upper()) if other.country else None
                ),
                "protocols": protocol_labels(other.services),
            }
            for other in sorted(folded, key=lambda n: _aware(n.time))
        ]
        return {
            "service_name": self._config.service_name,
            "protocols": protocol_labels(notice.services),
            "time": format_datetime(when, TIME_FORMAT, tzinfo=tz, locale=locale),
            "tz_label": timezone_label(tz, when, locale),
            "country_name": locale.territories.get(country) if country else None,
            "country": country,
            "help_url": self._config.help_url,
            "login": notice.login,
            "reasons": [reason.value for reason in notice.reasons],
            "as_org": notice.as_org,
            "asn": notice.asn,
            "earlier": earlier,
            "network": notice.network,
            "network_label": notice.network_label,
            "client": notice.client.label if notice.client else "",
            "travel": (
                _travel(notice.travel, locale)
                if notice.travel is not None and Reason.IMPOSSIBLE_TRAVEL in notice.reasons
                else None
            ),
            "spread": _spread(notice, locale) if Reason.MANY_ORIGINS in notice.reasons else [],
            "window": window_text(self._window_s, locale),
            "confirm_url": owner_links.confirm if owner_links else "",
            "deny_url": owner_links.deny if owner_links else "",
            "page_url": owner_links.page if owner_links else "",
        }

    def links(self, notice: Notice) -> NoticeLinks | None:
        """The owner's links for ``notice``; None when ``[web]`` has none."""
        return links(self._web, notice) if self._web is not None else None

    def render(
        self,
        notice: Notice,
        recipient: Recipient | None = None,
        folded: Sequence[Notice] = (),
    ) -> RenderedMessage:
        """``notice`` for ``recipient`` (language, time zone), with ``folded`` notices in it.

        Raises TemplateError when a template fails on this notice.
        """
        lang = self.resolve_language(recipient.language if recipient else None)
        owner_links = self.links(notice)
        values = self.variables(notice, lang, recipient, folded, owner_links)
        body = self._render(lang, TEMPLATE_FILE, values) or ""
        subject = self._render(lang, SUBJECT_FILE, values)
        short = self._render(lang, SMS_FILE, values)
        return RenderedMessage(
            subject=_first_line(subject if subject is not None else body),
            body=body,
            short=short if short is not None else body,
            language=lang,
            folded=tuple(sorted(folded, key=lambda n: _aware(n.time))),
            links=owner_links,
        )

    def _render(self, lang: str, file: str, values: dict[str, Any]) -> str | None:
        """``lang/file`` rendered; None when that language has no such file."""
        template = self._templates.get((lang, file))
        if template is None:
            return None
        try:
            return template.render(values)
        except jinja2.TemplateError as exc:
            raise TemplateError([f"{template.filename or lang}: {exc}"]) from exc

    def check(self) -> list[str]:
        """Problems found by rendering sample notices in every language; [] when all render."""
        problems: list[str] = []
        cases: list[tuple[Notice, Recipient | None, tuple[Notice, ...]]] = [
            (notice, None, ()) for notice in SAMPLE_NOTICES
        ]
        cases.append((SAMPLE_NOTICES[0], SAMPLE_RECIPIENT, SAMPLE_NOTICES[1:]))
        for (lang, file), template in sorted(self._templates.items()):
            filename = template.filename or f"{lang}/{file}"
            for notice, recipient, folded in cases:
                try:
                    text = template.render(self.variables(notice, lang, recipient, folded))
                except jinja2.UndefinedError as exc:
                    problems.append(f"{filename}: undefined: {exc.message}")
                    break
                except Exception as exc:
                    # an admin's template can fail in any filter or test; report, don't crash
                    problems.append(f"{filename}: {type(exc).__name__}: {exc}")
                    break
                if not text.strip():
                    problems.append(f"{filename}: renders an empty message")
                    break
        return problems


def _country_name(code: str | None, locale: Locale) -> str | None:
    """A country code's name in ``locale``; None when unknown, a code Babel does not know, or
    ``ZZ`` (which Babel would call an "Unknown Region")."""
    if not code or code.upper() == "ZZ":
        return None
    return locale.territories.get(code.upper())


def _travel(travel: Travel, locale: Locale) -> dict[str, Any]:
    """What a template sees of an impossible journey: the figures rounded for a reader."""
    minutes = round(max(0.0, travel.hours) * 60)
    return {
        "from_country": travel.from_country.upper() if travel.from_country else None,
        "from_country_name": _country_name(travel.from_country, locale),
        "km": format_decimal(round(max(0.0, travel.km)), locale=locale),
        "hours": format_decimal(round(max(0.0, travel.hours), 1), "0.0", locale=locale),
        "minutes": minutes if minutes < 60 else None,
    }


def window_text(seconds: float, locale: Locale) -> str:
    """A time span as the messages name it: "1時間", "30分"; in English "hour", "30 minutes"
    (for "within the last hour")."""
    text = str(
        format_timedelta(timedelta(seconds=seconds), threshold=1, format="long", locale=locale)
    )
    if locale.language == "en" and text.startswith("1 "):
        return text[2:]
    if locale.language in ("ja", "zh", "ko"):
        return text.replace(" ", "")  # "1 時間" -> "1時間"
    return text


def _spread(notice: Notice, locale: Locale) -> list[dict[str, Any]]:
    """The places of a many_origins notice (``"JP AS2516"``, ``"?? unknown"``, ``"US
    org:Name"``), named for a reader, those with a known country first."""
    places = []
    for entry in notice.spread:
        code, _, provider_id = entry.strip().partition(" ")
        country = code.upper() if code and code != "??" else None
        provider: str | None = provider_id.strip() or None
        if provider == "unknown":
            provider = None
        elif provider and provider.startswith("org:"):
            provider = provider.removeprefix("org:").strip() or None
        elif provider and provider == notice.provider and notice.as_org:
            # the login's own provider: its AS organisation is known too
            provider = f"{notice.as_org} {provider}"
        places.append(
            {
                "country": country,
                "country_name": _country_name(country, locale),
                "provider": provider,
                "current": (
                    country == (notice.country.upper() if notice.country else None)
                    and provider_id.strip() == (notice.provider or "unknown")
                ),
            }
        )
    return sorted(places, key=lambda place: place["country_name"] is None)


def _aware(when: datetime) -> datetime:
    # the store keeps UTC; a naive time can only have come from there
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def recompile(config: Config) -> Renderer | None:
    """The templates compiled again (SIGHUP), or None, logged, when they are broken: the ones
    in use then stay."""
    try:
        renderer = Renderer(config.message, config.web, config.compromise.window_s)
    except TemplateError as exc:
        logging.getLogger("policy_server.render").error(
            "templates not reloaded, keeping those in use: %s", exc
        )
        return None
    logging.getLogger("policy_server.render").info(
        "templates reloaded: %s", ", ".join(renderer.languages)
    )
    return renderer
