"""Who gets a notice and when: recipients, one notice per event, per-account limit, quiet hours."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import sqlite3
import time
import zoneinfo
from collections.abc import Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from support import Sink
from test_delivery import report

from policy_server.config import (
    Config,
    ConfigError,
    ThrottleRule,
    config_from_mapping,
    parse_quiet_hours,
)
from policy_server.delivery.rules import (
    is_urgent,
    quiet_until,
    resolve_recipient,
    throttled_until,
)
from policy_server.model import Reason, Recipient
from policy_server.service import keys
from policy_server.service.app import create_app
from policy_server.store.base import Contact

Client = TestClient[web.Request, web.Application]
TOKYO = zoneinfo.ZoneInfo("Asia/Tokyo")
URGENT = ("new_country+new_provider",)


def at(hour: int, minute: int = 0, day: int = 10) -> float:
    return datetime.datetime(2026, 3, day, hour, minute, tzinfo=TOKYO).timestamp()


# -- recipients -------------------------------------------------------------------------------


def test_contact_comes_first() -> None:
    contact = Contact("taro", "t@example.jp", "+819012345678", "en", "Europe/Paris")
    assert resolve_recipient("email", contact, "taro", "none", "") == Recipient(
        "t@example.jp", "en", "Europe/Paris"
    )
    assert resolve_recipient("phone", contact, "taro", "none", "") == Recipient(
        "+819012345678", "en", "Europe/Paris"
    )


def test_login_fallback_only_when_the_login_is_such_an_address() -> None:
    assert resolve_recipient("email", None, "taro@example.jp", "login", "") == Recipient(
        "taro@example.jp"
    )
    assert resolve_recipient("email", None, "taro", "login", "") is None
    assert resolve_recipient("phone", None, "taro@example.jp", "login", "") is None
    assert resolve_recipient("phone", None, "+819012345678", "login", "") == Recipient(
        "+819012345678"
    )
    # fallback "none": the contacts table or nothing
    assert resolve_recipient("email", None, "taro@example.jp", "none", "") is None


def test_template_fallback() -> None:
    found = resolve_recipient("email", None, "taro", "template", "{local}@mail.example.jp")
    assert found == Recipient("taro@mail.example.jp")
    found = resolve_recipient("email", None, "taro@old.example", "template", "{local}@new.example")
    assert found == Recipient("taro@new.example")
    # a contact row with only a language still gives the language to the fallback address
    contact = Contact("taro", None, None, "ja", None)
    found = resolve_recipient("email", contact, "taro", "template", "{login}@example.jp")
    assert found == Recipient("taro@example.jp", "ja", None)


def test_channels_that_need_no_address_always_have_a_recipient() -> None:
    assert resolve_recipient(None, None, "taro", "none", "") == Recipient("")


def test_recipient_template_placeholders_are_checked() -> None:
    with pytest.raises(ConfigError, match="unknown placeholder"):
        config_from_mapping(
            {
                "channels": [
                    {
                        "type": "log",
                        "recipient_fallback": "template",
                        "recipient_template": "{user}@example.jp",
                    }
                ]
            }
        )
    with pytest.raises(ConfigError, match="needs recipient_template"):
        config_from_mapping({"channels": [{"type": "log", "recipient_fallback": "template"}]})


# -- quiet hours ------------------------------------------------------------------------------


def test_quiet_hours_parse() -> None:
    assert parse_quiet_hours("23:00-07:00") == (datetime.time(23), datetime.time(7))
    assert parse_quiet_hours(" 9:30 - 12:00 ") == (datetime.time(9, 30), datetime.time(12))
    assert parse_quiet_hours("") is None
    for bad in ("23-07", "25:00-07:00", "07:00-07:00", "23:00"):
        with pytest.raises(ValueError):
            parse_quiet_hours(bad)
    with pytest.raises(ConfigError, match=r"channels\[0\]\.quiet_hours"):
        config_from_mapping({"channels": [{"type": "log", "quiet_hours": "late"}]})


@pytest.mark.parametrize(
    ("now", "wake"),
    [
        (at(23, 30), at(7, day=11)),  # before midnight: until tomorrow morning
        (at(2, 15), at(7)),  # after midnight: until this morning
        (at(6, 59), at(7)),
        (at(7, 0), None),  # the end is outside
        (at(12), None),
        (at(22, 59), None),
        (at(23, 0), at(7, day=11)),  # the start is inside
    ],
)
def test_quiet_hours_across_midnight(now: float, wake: float | None) -> None:
    assert quiet_until(now, "23:00-07:00", TOKYO, [Reason.FIRST_USE], URGENT) == wake


def test_quiet_hours_within_a_day_and_none() -> None:
    assert quiet_until(at(12, 30), "12:00-13:00", TOKYO, [Reason.FIRST_USE], URGENT) == at(13)
    assert quiet_until(at(13, 30), "12:00-13:00", TOKYO, [Reason.FIRST_USE], URGENT) is None
    assert quiet_until(at(2), "", TOKYO, [Reason.FIRST_USE], URGENT) is None


def test_quiet_hours_follow_the_recipients_zone() -> None:
    # 02:00 in Tokyo is 18:00 the day before in Paris (winter time): not quiet there
    paris = zoneinfo.ZoneInfo("Europe/Paris")
    assert quiet_until(at(2), "23:00-07:00", paris, [Reason.FIRST_USE], URGENT) is None
    assert quiet_until(at(2), "23:00-07:00", TOKYO, [Reason.FIRST_USE], URGENT) == at(7)


def test_new_country_and_new_provider_together_are_sent_at_night() -> None:
    both = [Reason.NEW_COUNTRY, Reason.NEW_PROVIDER]
    assert quiet_until(at(2), "23:00-07:00", TOKYO, both, URGENT) is None
    for alone in ([Reason.NEW_COUNTRY], [Reason.NEW_PROVIDER], [Reason.FIRST_USE]):
        assert quiet_until(at(2), "23:00-07:00", TOKYO, alone, URGENT) == at(7)
    assert is_urgent([Reason.FIRST_USE], ("first_use", "new_country+new_provider"))
    assert not is_urgent([Reason.NEW_PROVIDER], URGENT)


# -- per-account limit ------------------------------------------------------------------------

RULES = (ThrottleRule(max=3, window_s=3600), ThrottleRule(max=10, window_s=48 * 3600))


def test_throttle_allows_up_to_the_limit() -> None:
    now = 100_000.0
    assert throttled_until([], now, RULES) is None
    assert throttled_until([now - 50, now - 40], now, RULES) is None
    # the third in the hour was sent: the next may go when the oldest of the three leaves
    assert throttled_until([now - 50, now - 40, now - 30], now, RULES) == now - 50 + 3600
    # older ones no longer count for the hour
    assert throttled_until([now - 4000, now - 40, now - 30], now, RULES) is None


def test_throttle_longer_window() -> None:
    now = 1_000_000.0
    sent = [now - 40_000 + i * 3700 for i in range(10)]  # 10 in 48 h, at most 1 an hour
    assert throttled_until(sent, now, RULES) == sent[0] + 48 * 3600


def test_default_limits() -> None:
    config = config_from_mapping({})
    assert config.delivery.throttle == RULES
    assert (config.delivery.hold_s, config.delivery.coalesce_window_s) == (60.0, 600.0)


# -- through the service ----------------------------------------------------------------------


async def start(aiohttp_client: Any, make_config: Callable[..., Config], **sections: Any) -> Client:
    client: Client = await aiohttp_client(create_app(make_config(**sections)))
    return client


def rows(client: Client, sql: str) -> list[tuple[Any, ...]]:
    with contextlib.closing(sqlite3.connect(client.app[keys.CONFIG].storage.path)) as conn, conn:
        return conn.execute(sql).fetchall()


async def until_rows(
    client: Client, sql: str, check: Callable[[list[tuple[Any, ...]]], bool], timeout: float = 10
) -> list[tuple[Any, ...]]:
    found: list[tuple[Any, ...]] = []
    for _ in range(int(timeout / 0.05)):
        found = rows(client, sql)
        if check(found):
            return found
        await asyncio.sleep(0.05)
    raise AssertionError(f"never reached: {found}")


async def post_report(client: Client, **fields: str) -> None:
    response = await client.post("/?command=report", data=report(**fields))
    assert response.status == 200


async def test_imap_then_smtp_from_one_new_origin_is_one_notice(
    aiohttp_client: Any, make_config: Any, sink: Sink
) -> None:
    client = await start(
        aiohttp_client,
        make_config,
        delivery={"hold_s": 1.0, "throttle": []},
        message={"language": "en"},
        channels=[{"type": "webhook", "url": sink.url}],
    )
    await post_report(client, remote="203.0.113.7", protocol="imap")
    await post_report(client, remote="203.0.113.8", protocol="submission")  # same /24
    await post_report(client, remote="203.0.113.7", protocol="imap")  # a reconnect
    (notice,) = await sink.wait_for(1)
    assert notice["protocol"] == "imap"
    assert notice["protocols"] == ["imap", "submission"]
    assert "Example Mail (IMAP/SMTP)" in notice["message"]
    await asyncio.sleep(0.5)
    assert len(sink.received) == 1
    assert rows(client, "SELECT count(*) FROM notices") == [(1,)]

    # another origin is another event
    await post_report(client, remote="198.51.100.9", protocol="submission")
    second = (await sink.wait_for(2))[1]
    assert (second["reasons"], second["protocols"]) == (
        ["new_country", "new_provider"],
        ["submission"],
    )


async def test_a_login_after_the_window_does_not_join(
    aiohttp_client: Any, make_config: Any, sink: Sink
) -> None:
    client = await start(
        aiohttp_client,
        make_config,
        delivery={"hold_s": 1.0, "coalesce_window_s": 0.2, "throttle": []},
        channels=[{"type": "webhook", "url": sink.url}],
    )
    await post_report(client, remote="203.0.113.7", protocol="imap")
    await asyncio.sleep(0.4)
    await post_report(client, remote="203.0.113.7", protocol="pop3")
    (notice,) = await sink.wait_for(1)
    assert notice["protocols"] == ["imap"]


async def test_over_the_limit_notices_are_folded_not_dropped(
    aiohttp_client: Any, make_config: Any, sink: Sink
) -> None:
    client = await start(
        aiohttp_client,
        make_config,
        delivery={"hold_s": 0, "throttle": [{"max": 1, "window_s": 1.5}]},
        message={"language": "en"},
        channels=[{"type": "webhook", "url": sink.url}],
    )
    await post_report(client, remote="203.0.113.7")  # first use, sent at once
    (first,) = await sink.wait_for(1)
    for remote in ("198.51.100.9", "192.0.2.5", "2001:db8:2::5"):  # US, DE, FR
        await post_report(client, remote=remote)
    await asyncio.sleep(0.5)
    assert len(sink.received) == 1  # held back by the limit
    second = (await sink.wait_for(2))[1]
    assert second["remote"] == "2001:db8:2::5"  # the newest goes out, carrying the others
    assert "United States" in second["message"]
    assert "Germany" in second["message"]
    statuses = await until_rows(
        client,
        "SELECT d.status, d.folded_into, n.created FROM deliveries d"
        " JOIN notices n ON n.id = d.notice_id ORDER BY n.created",
        lambda found: all(r[0] in ("sent", "folded") for r in found),
    )
    assert [(s, f) for s, f, _ in statuses] == [
        ("sent", None),
        ("folded", second["id"]),
        ("folded", second["id"]),
        ("sent", None),
    ]
    await asyncio.sleep(2.0)
    assert [n["id"] for n in sink.received] == [first["id"], second["id"]]


async def test_quiet_hours_hold_non_urgent_notices_in_the_recipients_zone(
    aiohttp_client: Any, make_config: Any, sink: Sink
) -> None:
    now = datetime.datetime.now(datetime.UTC)
    start_h = now.hour
    quiet = f"{start_h:02d}:00-{(start_h + 2) % 24:02d}:00"  # now is inside, in UTC
    client = await start(
        aiohttp_client,
        make_config,
        message={"timezone": "UTC"},
        channels=[{"type": "webhook", "url": sink.url, "quiet_hours": quiet}],
    )
    store = client.app[keys.STORE]
    # twelve hours away from UTC, the same moment is far outside the quiet hours
    await store.upsert_contacts([Contact("away", None, None, None, "Etc/GMT-12")], time.time())

    await post_report(client, login="home", remote="203.0.113.7")
    await post_report(client, login="away", remote="203.0.113.7")
    (delivered,) = await sink.wait_for(1)
    assert delivered["login"] == "away"
    held = await until_rows(
        client,
        "SELECT d.status, d.next_attempt, d.last_error, d.attempts FROM deliveries d"
        " JOIN notices n ON n.id = d.notice_id WHERE n.account = 'home'",
        lambda found: bool(found) and found[0][2] == "quiet hours",
    )
    ((status, next_attempt, _error, attempts),) = held
    wake = now.replace(minute=0, second=0, microsecond=0) + datetime.timedelta(hours=2)
    assert (status, attempts) == ("queued", 0)
    assert next_attempt == pytest.approx(wake.timestamp())

    # the same account from a new country and a new provider at once: sent in quiet hours
    await post_report(client, login="home", remote="198.51.100.9")
    urgent = (await sink.wait_for(2))[1]
    assert (urgent["login"], urgent["reasons"]) == ("home", ["new_country", "new_provider"])


async def test_no_address_is_undeliverable_not_retried(
    aiohttp_client: Any, make_config: Any, sink: Sink
) -> None:
    client = await start(
        aiohttp_client,
        make_config,
        channels=[
            {"type": "email", "name": "mail", "sender": "n@example.jp", "port": 9},
            {"type": "webhook", "name": "hook", "url": sink.url},
        ],
    )
    await post_report(client, login="alice", remote="203.0.113.7")
    await sink.wait_for(1)
    found = await until_rows(
        client,
        "SELECT channel, status, attempts, last_error FROM deliveries ORDER BY channel",
        lambda r: sorted(x[1] for x in r) == ["sent", "undeliverable"],
    )
    assert found[0][:2] == ("hook", "sent")
    assert found[1][:2] == ("mail", "undeliverable")
    assert found[1][3] == "no email address for this account"
    await asyncio.sleep(0.3)
    assert rows(client, "SELECT status FROM deliveries WHERE channel = 'mail'") == [
        ("undeliverable",)
    ]


async def test_a_notice_held_back_past_its_deadline_is_still_delivered(
    aiohttp_client: Any, make_config: Any, sink: Sink
) -> None:
    client = await start(
        aiohttp_client,
        make_config,
        queue={"deadline_s": 0.5},
        delivery={"hold_s": 0, "throttle": [{"max": 1, "window_s": 1.2}]},
        channels=[{"type": "webhook", "url": sink.url}],
    )
    await post_report(client, login="alice", remote="203.0.113.7")
    await sink.wait_for(1)
    await post_report(client, login="alice", remote="198.51.100.9")  # over the limit
    second = (await sink.wait_for(2))[1]
    assert second["reasons"] == ["new_country", "new_provider"]
    await until_rows(
        client,
        "SELECT status FROM deliveries ORDER BY created",
        lambda found: found == [("sent",), ("sent",)],
    )
