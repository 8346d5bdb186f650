"""The owner's pages: what a notice's "It was me" / "It wasn't me" link opens.

GET shows the access and the account's recent accesses (the last 30 days, by origin, never a
full address) with one button (both on the page an SMS links to) and changes nothing: mail
security scanners fetch every link in a message. The button POSTs the link's token with a
CSRF field (:mod:`.csrf`); the answer is recorded and acted on (:mod:`..service.response`) and
the result page says what happened. A changed, forged, expired or misplaced token gets a 403
page and changes nothing. The pages never ask for a password, load nothing (the style is
inline and allowed by its hash alone) and hold no script.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import importlib.resources
import logging
import time
import urllib.parse
from collections.abc import AsyncIterator, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, Final, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import jinja2
from aiohttp import web
from babel import Locale
from babel.dates import format_datetime

from ..accounts import country_code, trip_end
from ..config import Config
from ..delivery.render import TIME_FORMAT, Renderer
from ..logs import RateLimitedLog
from ..model import AccountSettings, Notice, Recipient
from ..service import listen
from ..service.response import Responder
from ..store.base import (
    AccountRecord,
    Answer,
    BlockKind,
    Contact,
    DeliveryState,
    Feedback,
    StoreError,
)
from . import csrf
from .texts import texts
from .tokens import LinkToken, TokenError, read_token

log = logging.getLogger("policy_server.web")
_limited = RateLimitedLog(log)

#: the accesses a page lists: those of the last 30 days
RECENT_S: Final = 30 * 86400.0
#: what a POST may weigh (a token, a CSRF field, an answer)
MAX_FORM_BYTES: Final = 8192
#: link action -> the answers its page offers
BUTTONS: Final = {"confirm": ("confirm",), "deny": ("deny",), "page": ("confirm", "deny")}
#: the owner's choices the pages take (a form's ``setting``)
SETTINGS: Final = ("notices_off", "notices_on", "trip", "trip_end")


ANSWERS: Final = {"confirm": Answer.CONFIRMED, "deny": Answer.DENIED}

_CSS: Final = (
    importlib.resources.files("policy_server.web")
    .joinpath("templates", "page.css")
    .read_text("utf-8")
)
_CSS_HASH: Final = base64.b64encode(hashlib.sha256(_CSS.encode("utf-8")).digest()).decode()
HEADERS: Final = {
    "Content-Security-Policy": (
        f"default-src 'none'; style-src 'sha256-{_CSS_HASH}'; form-action 'self';"
        " frame-ancestors 'none'; base-uri 'none'"
    ),
    # the token is in the page's address: never sent to another site
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}


class PageStore(Protocol):
    """What the pages read."""

    async def notice_detail(self, notice_id: str) -> tuple[Notice, list[DeliveryState]] | None: ...

    async def contact(self, account: str) -> Contact | None: ...

    async def answer_to(self, notice_id: str) -> Feedback | None: ...

    async def account_record(self, account: str, decisions: int = 50) -> AccountRecord | None: ...

    async def settings(self, account: str) -> AccountSettings: ...

    async def save_settings(
        self, account: str, settings: AccountSettings, now: float
    ) -> AccountSettings: ...


class _Refusal(Exception):
    """A request answered with a refusal page: its status and why (a key of the texts)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class OwnerPages:
    """Renders the pages and handles the answers."""

    def __init__(
        self, config: Config, store: PageStore, renderer: Renderer, responder: Responder
    ) -> None:
        self._config = config
        self._web = config.web
        self._secret = config.web.secret.get_secret_value()
        self._store = store
        self._renderer = renderer
        self._responder = responder
        base = urllib.parse.urlsplit(config.web.public_url)
        self._origin = f"{base.scheme}://{base.netloc}".lower()
        self._cookie_path = base.path.rstrip("/") or "/"
        self._secure = base.scheme == "https"
        self._env = jinja2.Environment(
            loader=jinja2.PackageLoader("policy_server.web", "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
            auto_reload=False,
        )

    # -- requests ----------------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        action = request.path.rstrip("/").rpartition("/")[2]
        if action not in BUTTONS:
            return self._page(
                404,
                "refused.html",
                self._words(None),
                reason="not found",
                message=self._words(None)[1]["refused_invalid"],
            )
        try:
            if request.method in ("GET", "HEAD"):
                return await self._show(request, action)
            if request.method == "POST":
                return await self._answer(request, action)
        except _Refusal as refusal:
            return self._refused(refusal)
        except StoreError as exc:
            _limited.log(logging.ERROR, "store", "owner page not served: %s", exc)
            lang, words = self._words(None)
            return self._page(
                503,
                "refused.html",
                (lang, words),
                reason="unavailable",
                message=words["unavailable"],
            )
        response = web.Response(status=405, text="method not allowed")
        response.headers["Allow"] = "GET, HEAD, POST"
        return response

    async def _show(self, request: web.Request, action: str) -> web.StreamResponse:
        token = request.query.get("t", "")
        notice, _ = await self._notice(token, action)
        contact = await self._store.contact(notice.account)
        answered = await self._store.answer_to(notice.id)
        nonce = csrf.usable_nonce(request.cookies.get(csrf.COOKIE)) or csrf.new_nonce()
        now = time.time()
        buttons = BUTTONS[action]
        if answered is not None:
            # a denial stands; a confirmation may still be turned into a denial
            buttons = (
                () if answered.answer is Answer.DENIED else tuple(b for b in buttons if b == "deny")
            )
        values = await self._question(notice, contact, answered, now)
        response = self._page(
            200,
            "question.html",
            values.pop("_words"),
            **values,
            buttons=buttons,
            action=action,
            token=token,
            csrf=csrf.form_value(self._secret, nonce, token),
        )
        response.set_cookie(
            csrf.COOKIE,
            nonce,
            path=self._cookie_path,
            httponly=True,
            samesite="Strict",
            secure=self._secure,
            max_age=86400,
        )
        return response

    async def _answer(self, request: web.Request, action: str) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        if origin is not None and origin != "null" and origin.lower() != self._origin:
            raise _Refusal(403, "form")
        if (request.content_length or 0) > MAX_FORM_BYTES:
            raise _Refusal(403, "form")
        form = await request.post()
        token, given, answer = (str(form.get(k, "")) for k in ("t", "csrf", "answer"))
        notice, _ = await self._notice(token, action)
        setting = str(form.get("setting", ""))
        # a form is one of the settings or else an answer this page offers
        known = setting in SETTINGS if setting else answer in BUTTONS[action]
        if not known:
            raise _Refusal(403, "form")
        if not csrf.form_ok(self._secret, request.cookies.get(csrf.COOKIE), token, given):
            raise _Refusal(403, "form")
        if setting:
            return await self._setting(notice, setting, form)
        answered = await self._responder.answer(notice, ANSWERS[answer])
        contact = await self._store.contact(notice.account)
        lang, words = self._words(contact)
        stored = answered.feedback
        if answered.fresh:
            message = words[f"done_{stored.answer.value}"]
        else:
            message = words[f"answered_{stored.answer.value}"].format(
                when=self._time(stored.at, lang, contact)
            )
        until = answered.block_until
        return self._page(
            200,
            "result.html",
            (lang, words),
            result=stored.answer.value,
            message=message,
            block_until=self._time(until, lang, contact) if until else "",
            help_url=self._config.message.help_url,
        )

    async def _setting(
        self, notice: Notice, setting: str, form: Mapping[str, Any]
    ) -> web.StreamResponse:
        """The owner's choice about their notices: on, off, a trip or its end."""
        contact = await self._store.contact(notice.account)
        lang, words = self._words(contact)
        current = await self._store.settings(notice.account)
        if setting == "notices_off":
            chosen = replace(current, notices=False)
        elif setting == "notices_on":
            chosen = replace(current, notices=True)
        elif setting == "trip_end":
            chosen = replace(current, trip_country=None, trip_until=None)
        else:
            country = country_code(str(form.get("country", "")))
            until = trip_end(str(form.get("until", "")), self._zone(contact))
            if country is None or until is None or until <= time.time():
                return self._page(
                    400,
                    "result.html",
                    (lang, words),
                    result="refused",
                    message=words["setting_bad"],
                    block_until="",
                    help_url="",
                )
            chosen = replace(current, trip_country=country, trip_until=until)
        await self._store.save_settings(notice.account, chosen, time.time())
        return self._page(
            200,
            "result.html",
            (lang, words),
            result="saved",
            message=words["saved"],
            block_until="",
            help_url="",
        )

    async def _notice(self, token: str, action: str) -> tuple[Notice, LinkToken]:
        """The notice ``token`` is for, when it is valid on the ``action`` page."""
        try:
            found = read_token(self._secret, token, time.time(), action=action)
        except TokenError as exc:
            _limited.log(logging.INFO, f"token {exc.reason}", "owner link refused: %s", exc)
            raise _Refusal(403, "expired" if exc.reason == "expired" else "invalid") from None
        detail = await self._store.notice_detail(found.notice_id)
        if detail is None:
            raise _Refusal(404, "gone")
        notice = detail[0]
        if notice.account != found.account:
            raise _Refusal(403, "invalid")
        return notice, found

    # -- pages -------------------------------------------------------------------------------

    def _words(self, contact: Contact | None) -> tuple[str, dict[str, str]]:
        language = contact.language if contact is not None and contact.language else None
        return texts(self._renderer.resolve_language(language))

    def _zone(self, contact: Contact | None) -> ZoneInfo:
        if contact is not None and contact.timezone:
            with contextlib.suppress(ZoneInfoNotFoundError, ValueError):
                return ZoneInfo(contact.timezone)
        return ZoneInfo(self._config.message.timezone)

    def _time(self, at: float, lang: str, contact: Contact | None) -> str:
        return format_datetime(
            datetime.fromtimestamp(at, UTC),
            TIME_FORMAT,
            tzinfo=self._zone(contact),
            locale=Locale.parse(lang),
        )

    async def _question(
        self, notice: Notice, contact: Contact | None, answered: Feedback | None, now: float
    ) -> dict[str, Any]:
        lang, words = self._words(contact)
        locale = Locale.parse(lang)
        recipient = Recipient(
            language=contact.language if contact else None,
            timezone=contact.timezone if contact else None,
        )
        seen = self._renderer.variables(notice, lang, recipient)
        provider = notice.as_org or notice.provider
        access = {
            "time": seen["time"],
            "tz_label": seen["tz_label"],
            "protocols": seen["protocols"],
            "country_name": seen["country_name"],
            "provider": provider,
            "program": seen["client"],
        }
        target = self._responder.target(notice)
        if target.kind is BlockKind.PROVIDER:
            network = words["network_provider"].format(
                provider=provider or target.key,
                country=seen["country_name"] or words["unknown"],
            )
        else:
            network = words["network_prefix"].format(prefix=target.key)
        record = await self._store.account_record(notice.account, decisions=0)
        recent = _recent(record, notice, now, locale) if record else []
        for row in recent:
            row["last"] = self._time(row["last_seen"], lang, contact)
        said = None
        if answered is not None:
            said = {
                "answer": answered.answer.value,
                "text": words[f"answered_{answered.answer.value}"].format(
                    when=self._time(answered.at, lang, contact)
                ),
            }
        until = self._responder.block_until(notice, now)
        chosen = await self._store.settings(notice.account)
        trip = ""
        if chosen.trip_country and chosen.trip_until is not None and chosen.trip_until > now:
            last = datetime.fromtimestamp(chosen.trip_until - 1, self._zone(contact)).date()
            trip = words["trip_state"].format(
                country=locale.territories.get(chosen.trip_country, chosen.trip_country),
                until=last.isoformat(),
            )
        return {
            "_words": (lang, words),
            "settings": {"notices": chosen.notices, "trip": trip},
            "access": access,
            "recent": recent,
            "answered": said,
            "network": network,
            "block_days": self._config.response.block_days,
            "block_until": self._time(until, lang, contact) if until else "",
        }

    def _refused(self, refusal: _Refusal) -> web.Response:
        lang, words = self._words(None)
        message = {
            "expired": words["refused_expired"].format(days=self._web.link_days),
            "gone": words["refused_gone"],
            "form": words["refused_form"],
        }.get(refusal.reason, words["refused_invalid"])
        return self._page(
            refusal.status, "refused.html", (lang, words), reason=refusal.reason, message=message
        )

    def _page(
        self, status: int, template: str, language: tuple[str, dict[str, str]], **values: Any
    ) -> web.Response:
        lang, words = language
        values.setdefault("help_url", self._config.message.help_url)
        html = self._env.get_template(template).render(
            lang=lang, t=words, css=_CSS, service_name=self._config.message.service_name, **values
        )
        return web.Response(
            status=status, text=html, content_type="text/html", charset="utf-8", headers=HEADERS
        )


def _recent(
    record: AccountRecord, notice: Notice, now: float, locale: Locale
) -> list[dict[str, Any]]:
    """The account's origins used in the last 30 days, by country and provider (their
    prefixes together, never shown), the most recent first."""
    rows: dict[tuple[str | None, str | None], dict[str, Any]] = {}
    for origin in record["origins"]:
        if origin["last_seen"] < now - RECENT_S:
            continue
        key = (origin["country"], origin["provider"])
        row = rows.get(key)
        if row is None:
            country = origin["country"]
            rows[key] = row = {
                "country_name": locale.territories.get(country.upper()) if country else None,
                "provider": origin["as_org"] or origin["provider"],
                "count": 0,
                "last_seen": 0.0,
                "current": key == (notice.country, notice.provider),
            }
        row["count"] += origin["count"]
        row["last_seen"] = max(row["last_seen"], origin["last_seen"])
    return sorted(rows.values(), key=lambda r: -float(r["last_seen"]))


def pages_app(pages: OwnerPages) -> web.Application:
    """The owner's pages as an aiohttp application (every path ends in an action)."""
    app = web.Application(client_max_size=MAX_FORM_BYTES)
    app.router.add_route("*", "/{tail:.*}", pages.handle)
    return app


@contextlib.asynccontextmanager
async def pages_listener(
    config: Config, app: web.Application, reuse_port: bool = False
) -> AsyncIterator[web.AppRunner | None]:
    """Serve the pages on ``[web] listen`` while the context is open (nothing when unset).

    A listener that cannot start is one line in the log: the pages must never stop the
    service from answering Dovecot. No access log: a link's address holds its token.
    """
    address = config.web.listen
    if not address:
        yield None
        return
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        try:
            sockets = listen.bind(address, reuse_port=reuse_port)
            listen.listen(address, sockets)
        except listen.ListenError as exc:
            log.error("owner pages not started: %s (the service goes on without them)", exc)
        else:
            for sock in sockets:
                await web.SockSite(runner, sock).start()
            log.info("owner pages on http://%s/ for %s", address, config.web.public_url)
        yield runner
    finally:
        await runner.cleanup()
