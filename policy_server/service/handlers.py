"""The Dovecot-facing HTTP endpoint.

``allow`` is answered at once: refused (status -1) only when the account blocked the login's
origin, which is looked up only for an account with blocks. ``report`` is recorded and
answered after its commit, inside a time budget: when the budget runs out or anything fails,
Dovecot gets ``{"status":0}`` anyway (fail open) and the work, if still running, is left to
finish on its own.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time

from aiohttp import web

from ..logs import RateLimitedLog
from ..model import Command, LoginEvent
from ..protocol import ALLOW_ANSWER, REPORT_ANSWER, ProtocolError, parse_request
from ..store.base import Outcome, Overloaded
from . import keys
from .blocks import BlockSet
from .stats import Stats

log = logging.getLogger("policy_server.http")
_limited = RateLimitedLog(log)

_JSON = "application/json"
# the answer to a login from an origin its account blocked: refused before the passdb
ALLOW_REFUSED = b'{"status":-1,"msg":"login refused from this network; see your notice"}'


def _answer(body: bytes, status: int = 200) -> web.Response:
    return web.Response(body=body, status=status, content_type=_JSON)


def _error(exc: ProtocolError, request: web.Request) -> web.Response:
    # One line per refused request, naming the peer and what was wrong, never the body.
    _limited.log(
        logging.WARNING,
        f"refused:{exc.code}",
        "refused request from %s: %s: %s",
        request.remote,
        exc.code,
        exc.detail,
    )
    return _answer(json.dumps(exc.as_json()).encode(), exc.status)


async def timed_endpoint(request: web.Request) -> web.Response:
    """The endpoint, with the time of each answer in the latency histogram."""
    started = time.perf_counter()
    response = await policy_endpoint(request)
    request.app[keys.STATS].answered_in(
        request.query.get("command", ""), time.perf_counter() - started
    )
    return response


async def policy_endpoint(request: web.Request) -> web.Response:
    app = request.app
    stats = app[keys.STATS]
    command = request.query.get("command", "")
    if request.method != "POST":
        stats.count(command, "bad_method")
        response = _error(
            ProtocolError("method_not_allowed", f"{request.method} is not allowed; use POST", 405),
            request,
        )
        response.headers["Allow"] = "POST"
        return response
    if not app[keys.AUTH].allows(request.headers):
        stats.count(command, "unauthorized")
        return _error(
            ProtocolError("unauthorized", "missing or wrong API header / Basic auth", 401),
            request,
        )
    limit = app[keys.CONFIG].server.max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        stats.count(command, "too_large")
        return _error(
            ProtocolError("body_too_large", f"body over the {limit}-byte limit", 413), request
        )
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        stats.count(command, "too_large")
        return _error(
            ProtocolError("body_too_large", f"body over the {limit}-byte limit", 413), request
        )
    try:
        event = parse_request(command, body)
    except ProtocolError as exc:
        stats.count(command, exc.code)
        return _error(exc, request)
    for repair in event.repairs:
        _limited.log(logging.WARNING, "repaired", "request from %s: %s", request.remote, repair)
    if event.command is Command.ALLOW:
        # only an account with blocks costs more than a dictionary lookup
        if _refused(app[keys.BLOCKS], event):
            stats.count("allow", "refused")
            metrics = stats.metrics
            if metrics is not None:
                metrics.allow_refused.inc()
            return _answer(ALLOW_REFUSED)
        stats.count("allow", "ok")
        return _answer(ALLOW_ANSWER)

    received = time.time()
    budget = app[keys.CONFIG].server.request_budget_ms / 1000
    recorder = app[keys.RECORDER]
    try:
        started = recorder.begin(event, received)
    except Exception as exc:
        return _report_failed(stats, exc)
    if isinstance(started, Outcome):
        _count_outcome(stats, started)
        return _answer(REPORT_ANSWER)
    work = asyncio.ensure_future(recorder.finish(event, started))
    try:
        outcome = await asyncio.wait_for(asyncio.shield(work), budget)
    except TimeoutError:
        work.add_done_callback(_late_result)
        return _fail_open(
            stats,
            "budget",
            logging.WARNING,
            "report for %s not recorded within %.0f ms; answered status 0",
            event.protocol or "?",
            budget * 1000,
        )
    except Exception as exc:
        return _report_failed(stats, exc)
    _count_outcome(stats, outcome)
    return _answer(REPORT_ANSWER)


def _refused(blocks: BlockSet, event: LoginEvent) -> bool:
    """Whether the login's account blocked its origin; never True on an error (fail open)."""
    try:
        return blocks.refuses(event.login, event.remote, time.time()) is not None
    except Exception as exc:
        _limited.log(
            logging.WARNING,
            f"allow:{type(exc).__name__}",
            "allow checked against blocks failed, answered status 0: %s",
            exc,
        )
        return False


def _fail_open(stats: Stats, reason: str, level: int, msg: str, *args: object) -> web.Response:
    """Answer a report ``{"status":0}`` unrecorded, counted by reason and logged (rate-limited)."""
    stats.failed_open(reason)
    _limited.log(level, reason, msg, *args)
    return _answer(REPORT_ANSWER)


def _report_failed(stats: Stats, exc: Exception) -> web.Response:
    """Anything that went wrong with a report: answered status 0, its kind counted and logged."""
    if isinstance(exc, Overloaded):
        return _fail_open(stats, "overloaded", logging.WARNING, "report answered status 0: %s", exc)
    _limited.log(
        logging.ERROR,
        f"error:{type(exc).__name__}",
        "report failed, answered status 0: %s",
        exc,
    )
    stats.failed_open("error")
    return _answer(REPORT_ANSWER)


def _count_outcome(stats: Stats, outcome: Outcome) -> None:
    stats.decided(reason.value for reason in outcome.decision.reasons)
    if outcome.notice_id is not None:
        stats.notices_queued += 1
        stats.count("report", "notice")
    else:
        stats.count("report", "ok")


def _late_result(task: asyncio.Future[Outcome]) -> None:
    """Collect the result of a report that finished after its answer, so no error goes unseen."""
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None:
        _limited.log(logging.ERROR, "late", "late report failed: %s", exc)
