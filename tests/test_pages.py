"""The owner's pages over HTTP, against a running service: what GET shows and never changes,
what the POST of each answer does (the answer stored, the block, the operators' alert, the
response program), and every link or form that must be refused.

The same pages in a real browser are in test_pages_browser.py.
"""

from __future__ import annotations

import io
import json
import sys
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from pages_support import (
    ABROAD,
    ALLOWED,
    HOME,
    REFUSED,
    SECRET,
    Owner,
    Running,
    eventually,
    owner,
    read_form,
    running,
    unusual_notice,
)
from support import free_port

from policy_server.commands.history import history_export, history_forget, history_show
from policy_server.delivery.rules import quiet_until
from policy_server.model import AccountSettings, Reason
from policy_server.policy import Decision, from_blocked
from policy_server.service import keys
from policy_server.store.base import Answer, BlockKind, BlockTarget, Contact
from policy_server.web.tokens import make_token

__all__ = ["owner", "running"]  # fixtures


async def test_get_shows_the_access_and_changes_nothing(
    running: Callable[..., Awaitable[Running]], owner: Callable[[str], Owner]
) -> None:
    svc = await running()
    notice = await unusual_notice(svc)
    links = notice["links"]
    assert links["confirm"].startswith(svc.public_url + "/confirm?t=")
    assert links["deny"].startswith(svc.public_url + "/deny?t=")
    scanner = owner("http://127.0.0.1")
    store = svc.client.app[keys.STORE]
    # a mail scanner fetches every link, some of them twice
    for url in (links["confirm"], links["deny"], links["deny"]):
        status, html, headers = await scanner.get(url)
        assert status == 200
        assert "data-result" not in html
        assert headers["Cache-Control"] == "no-store"
        assert headers["Referrer-Policy"] == "same-origin"
        csp = headers["Content-Security-Policy"]
        assert "default-src 'none'" in csp and "form-action 'self'" in csp
        assert "script" not in html.lower()
        # no full address, nothing loaded, no password field
        assert HOME not in html and ABROAD not in html
        assert "<link" not in html and "src=" not in html
        assert 'type="password"' not in html
    assert await store.answer_to(notice["id"]) is None
    assert svc.client.app[keys.BLOCKS].of("alice@example.jp") is None
    assert await svc.allow("alice@example.jp", ABROAD) == ALLOWED
    # the page of the deny link: the access, the recent accesses by origin, one button
    status, html, _ = await scanner.get(links["deny"])
    form = read_form(html)
    assert form.buttons == ["deny"] and set(form.fields) == {"t", "csrf"}
    assert "Example Hosting US" in html and "Example Carrier JP" in html
    assert "United States" not in html  # the default language is ja
    assert "アメリカ合衆国" in html and "日本" in html
    assert "パスワードをお尋ねすることはありません" in html
    _, confirm_html, _ = await scanner.get(links["confirm"])
    assert read_form(confirm_html).buttons == ["confirm"]
    # no IMAP ID, no mail program named
    assert notice["client"] is None and 'id="access-program"' not in html


async def test_the_mail_program_reaches_the_notice_and_the_page(
    running: Callable[..., Awaitable[Running]], owner: Callable[[str], Owner]
) -> None:
    svc = await running()
    await svc.notice("alice@example.jp", HOME)
    # Dovecot passes the IMAP ID on as device_id
    notice = await svc.notice("alice@example.jp", ABROAD, '"name" "Thunderbird" "version" "128.3"')
    assert notice["client"] == {"name": "Thunderbird", "version": "128.3"}
    assert "■メールソフト\nThunderbird 128\n" in notice["message"]
    _, html, _ = await owner("http://127.0.0.1").get(notice["links"]["deny"])
    assert '<td id="access-program">Thunderbird 128</td>' in html


async def test_deny_blocks_alerts_and_runs_the_program(
    running: Callable[..., Awaitable[Running]], owner: Callable[[str], Owner]
) -> None:
    svc = await running()
    notice = await unusual_notice(svc)
    browser = owner("http://127.0.0.1:" + svc.public_url.split(":")[2].split("/")[0])
    assert await svc.allow("alice@example.jp", ABROAD) == ALLOWED
    status, html = await browser.answer(notice["links"]["deny"], "deny")
    assert status == 200, html
    assert 'data-result="denied"' in html
    # enforced at once by this node: the account from that provider, not from home, not others
    assert await svc.allow("alice@example.jp", ABROAD) == REFUSED
    assert await svc.allow("alice@example.jp", "198.51.100.200") == REFUSED
    assert await svc.allow("alice@example.jp", HOME) == ALLOWED
    assert await svc.allow("bob@example.jp", ABROAD) == ALLOWED
    store = svc.client.app[keys.STORE]
    answer = await store.answer_to(notice["id"])
    assert answer is not None and answer.answer is Answer.DENIED
    (block,) = await store.list_blocks(time.time(), "alice@example.jp")
    assert block.target == BlockTarget(BlockKind.PROVIDER, "AS64510", "US")
    assert block.notice_id == notice["id"] and block.source.value == "owner"
    assert 6.9 * 86400 < block.until - time.time() <= 7 * 86400
    assert svc.metric("policy_server_owner_answers_total", answer="denied") == 1
    # the operators' channel gets one alert with the account, the origin and the notice
    (alert,) = await svc.admin.wait_for(1)
    assert "alice@example.jp" in alert["message"] and notice["id"] in alert["message"]
    assert "AS64510" in alert["message"] and "US" in alert["message"]
    # the owner's channel got nothing more
    assert len(svc.hook.received) == 2
    # the response program read the notice and the block on its standard input
    await eventually(lambda: svc.program_out.exists() and svc.program_out.read_text() != "")
    document = json.loads(svc.program_out.read_text())
    assert document["id"] == notice["id"] and document["account"] == "alice@example.jp"
    assert document["answer"] == "denied" and document["block"]["key"] == "AS64510"
    # a second click (or the page again) changes nothing and says what was done
    status, html, _ = await browser.get(notice["links"]["deny"])
    assert status == 200 and read_form(html).buttons == [] and 'data-answer="denied"' in html
    assert svc.metric("policy_server_owner_answers_total", answer="denied") == 1


async def test_confirm_records_the_answer_and_marks_the_origin(
    running: Callable[..., Awaitable[Running]], owner: Callable[[str], Owner]
) -> None:
    svc = await running()
    notice = await unusual_notice(svc)
    browser = owner("http://127.0.0.1:" + svc.public_url.split(":")[2].split("/")[0])
    status, html = await browser.answer(notice["links"]["confirm"], "confirm")
    assert status == 200 and 'data-result="confirmed"' in html
    store = svc.client.app[keys.STORE]
    answer = await store.answer_to(notice["id"])
    assert answer is not None and answer.answer is Answer.CONFIRMED
    record = await store.account_record("alice@example.jp")
    assert record is not None
    confirmed = {row["prefix"]: row["confirmed"] for row in record["origins"]}
    assert confirmed["198.51.100.0/24"] is not None and confirmed["203.0.113.0/24"] is None
    assert svc.client.app[keys.BLOCKS].of("alice@example.jp") is None
    assert svc.metric("policy_server_owner_answers_total", answer="confirmed") == 1
    # thought again: a denial replaces the confirmation (never the reverse)
    status, html = await browser.answer(notice["links"]["deny"], "deny")
    assert 'data-result="denied"' in html
    assert await svc.allow("alice@example.jp", ABROAD) == REFUSED
    status, html, _ = await browser.get(notice["links"]["confirm"])
    assert read_form(html).buttons == []


async def test_the_sms_page_offers_both_and_takes_either(
    running: Callable[..., Awaitable[Running]], owner: Callable[[str], Owner]
) -> None:
    svc = await running()
    notice = await unusual_notice(svc)
    page = notice["links"]["deny"].replace("/deny?t=", "/page?t=")
    browser = owner("http://127.0.0.1:" + svc.public_url.split(":")[2].split("/")[0])
    # the page link is a token of its own: the deny token does not open it
    status, _, _ = await browser.get(page)
    assert status == 403
    store = svc.client.app[keys.STORE]
    detail = await store.notice_detail(notice["id"])
    assert detail is not None
    links = svc.client.app[keys.RENDERER].links(detail[0])
    assert links is not None
    status, html, _ = await browser.get(links.page)
    assert status == 200 and read_form(html).buttons == ["confirm", "deny"]
    status, html = await browser.answer(links.page, "deny")
    assert 'data-result="denied"' in html


async def test_bad_links_and_forms_are_refused_and_change_nothing(
    running: Callable[..., Awaitable[Running]], owner: Callable[[str], Owner]
) -> None:
    svc = await running()
    notice = await unusual_notice(svc)
    deny = notice["links"]["deny"]
    base, _, token = deny.partition("?t=")
    site = "http://127.0.0.1:" + svc.public_url.split(":")[2].split("/")[0]
    browser = owner(site)
    store = svc.client.app[keys.STORE]
    expires = int(time.time()) + 3600
    tampered = token[:-3] + ("A" if token[-3] != "A" else "B") + token[-2:]
    foreign = make_token(
        "another-site-s-secret-0123456789abcdef", notice["id"], "alice@example.jp", "deny", expires
    )
    expired = make_token(SECRET, notice["id"], "alice@example.jp", "deny", int(time.time()) - 1)
    # a valid signature, for another account than the notice's
    mismatched = make_token(SECRET, notice["id"], "bob@example.jp", "deny", expires)
    for bad, reason in (
        (tampered, "invalid"),
        (foreign, "invalid"),
        (expired, "expired"),
        (mismatched, "invalid"),
        ("", "invalid"),
        ("x" * 5000, "invalid"),
    ):
        status, html, _ = await browser.get(f"{base}?t={bad}")
        assert status == 403, (bad, html)
        assert f'data-reason="{reason}"' in html
        assert "<form" not in html
    # a confirm token on the deny page, a deny token on the confirm page
    status, _, _ = await browser.get(notice["links"]["confirm"].replace("/confirm?", "/deny?"))
    assert status == 403
    # POSTs: a good page first, for a cookie and a valid form
    status, html, _ = await browser.get(deny)
    form = read_form(html)
    good = {**form.fields, "answer": "deny"}
    for fields, origin in (
        ({**good, "csrf": "A" * 22}, None),  # a forged CSRF field
        ({**good, "csrf": ""}, None),
        ({**good, "t": tampered}, None),
        ({**good, "t": expired}, None),
        ({**good, "answer": "confirm"}, None),  # not what a deny link offers
        (good, "https://evil.example"),  # another site's form
    ):
        status, html = await browser.post(deny, fields, origin)
        assert status in (403, 404), (fields, html)
        assert "data-result" not in html
    # a POST without the page's cookie (another browser, a replayed form)
    stranger = owner(site)
    status, _ = await stranger.post(deny, good)
    assert status == 403
    assert await store.answer_to(notice["id"]) is None
    assert svc.client.app[keys.BLOCKS].of("alice@example.jp") is None
    # GET never acts, PUT is not a method here
    async with browser.session.put(deny, data=good) as resp:
        assert resp.status == 405
    # and the good form still works
    status, html = await browser.post(deny, good)
    assert status == 200 and 'data-result="denied"' in html


async def test_the_page_speaks_the_owners_language(
    running: Callable[..., Awaitable[Running]], owner: Callable[[str], Owner]
) -> None:
    svc = await running()
    store = svc.client.app[keys.STORE]
    await store.upsert_contacts(
        [Contact("carol@example.jp", language="en", timezone="Europe/Berlin")], time.time()
    )
    notice = await unusual_notice(svc, "carol@example.jp")
    status, html, _ = await owner("http://127.0.0.1").get(notice["links"]["deny"])
    assert status == 200
    assert '<html lang="en">' in html
    assert "United States" in html and "Japan" in html
    assert "This page never asks for your password" in html
    assert "Central European" in html or "CET" in html or "Berlin" in html


async def test_no_pages_without_web_listen(
    running: Callable[..., Awaitable[Running]], owner: Callable[[str], Owner]
) -> None:
    port = free_port()
    svc = await running(
        web={"public_url": f"http://127.0.0.1:{port}", "secret": SECRET}, response={}
    )
    notice = await unusual_notice(svc)
    # the links exist (another process may serve the pages), this one serves nothing
    assert notice["links"]["deny"].startswith(f"http://127.0.0.1:{port}/deny?t=")
    with pytest.raises(OSError):
        await owner("x").get(notice["links"]["deny"])


if sys.platform != "linux":  # pragma: no cover
    pytestmark = pytest.mark.skip(reason="the response program is a shell script")


async def test_a_login_from_a_blocked_origin_makes_an_urgent_notice_and_an_alert(
    running: Callable[..., Awaitable[Running]], owner: Callable[[str], Owner]
) -> None:
    svc0 = await running()
    notice = await unusual_notice(svc0)
    site = "http://127.0.0.1:" + svc0.public_url.split(":")[2].split("/")[0]
    _, html = await owner(site).answer(notice["links"]["deny"], "deny")
    assert 'data-result="denied"' in html
    await svc0.admin.wait_for(1)  # the denial's alert
    # Dovecot without the allow check before auth: the login from the blocked origin succeeds
    # and is reported
    before = len(svc0.hook.received)
    await svc0.report("alice@example.jp", ABROAD)
    received = await svc0.hook.wait_for(before + 1)
    blocked = received[before]
    assert blocked["reasons"][0] == "blocked_origin"
    assert "遮断したネットワーク" in blocked["message"]
    (_, alert) = await svc0.admin.wait_for(2)
    assert "which is blocked" in alert["message"] and "alice@example.jp" in alert["message"]
    assert svc0.metric("policy_server_blocked_origin_logins_total") == 1
    # a client polling from there makes one notice an hour, not one a poll: the next login
    # from a new origin is the next notice
    await svc0.report("alice@example.jp", ABROAD)
    following = await svc0.notice("alice@example.jp", "203.0.113.200")
    assert following["reasons"] == ["new_provider"]
    assert [n["reasons"][0] for n in svc0.hook.received].count("blocked_origin") == 1


def test_a_blocked_origin_is_urgent_in_quiet_hours_and_learning() -> None:
    tz = ZoneInfo("Asia/Tokyo")
    now = time.time()
    local = datetime.fromtimestamp(now, tz)
    quiet = f"{local - timedelta(hours=1):%H:%M}-{local + timedelta(hours=1):%H:%M}"
    # no combination of the channel's quiet_urgent is needed
    assert quiet_until(now, quiet, tz, [Reason.NEW_PROVIDER], ()) is not None
    assert quiet_until(now, quiet, tz, [Reason.BLOCKED_ORIGIN], ()) is None
    # the learning period and policy.notify hold other reasons back, never this one
    held = Decision((Reason.NEW_PROVIDER,), (), "learning")
    found = from_blocked(held, "provider AS64510 in US")
    assert found.notify == (Reason.BLOCKED_ORIGIN,)
    assert found.reasons == (Reason.BLOCKED_ORIGIN, Reason.NEW_PROVIDER)


async def test_answers_show_in_history_and_go_with_forget(
    running: Callable[..., Awaitable[Running]], owner: Callable[[str], Owner]
) -> None:
    svc = await running()
    config = svc.client.app[keys.CONFIG]
    notice = await unusual_notice(svc)
    browser = owner("http://127.0.0.1:" + svc.public_url.split(":")[2].split("/")[0])
    _, html = await browser.answer(notice["links"]["confirm"], "confirm")
    assert 'data-result="confirmed"' in html
    shown = io.StringIO()
    assert await history_show(config, "alice@example.jp", shown) == 0
    lines = shown.getvalue().splitlines()
    (abroad,) = [line for line in lines if line.strip().startswith("198.51.100.0/24")]
    (home,) = [line for line in lines if line.strip().startswith("203.0.113.0/24")]
    assert "confirmed by the owner" in abroad and "confirmed" not in home
    assert any("'it was me' to notice " + notice["id"] in line for line in lines)
    exported = io.StringIO()
    assert await history_export(config, "alice@example.jp", exported) == 0
    document = json.loads(exported.getvalue())
    by_prefix = {row["prefix"]: row for row in document["origins"]}
    assert by_prefix["198.51.100.0/24"]["confirmed"].startswith("20")
    assert by_prefix["203.0.113.0/24"]["confirmed"] is None
    (answer,) = document["feedback"]
    assert answer["notice_id"] == notice["id"] and answer["answer"] == "confirmed"
    assert answer["provider"] == "AS64510" and answer["country"] == "US"
    forgot = io.StringIO()
    assert await history_forget(config, "alice@example.jp", forgot) == 0
    assert "1 feedback" in forgot.getvalue()
    assert await svc.client.app[keys.STORE].answer_to(notice["id"]) is None


async def test_the_owner_turns_notices_off_and_declares_a_trip_by_post_only(
    running: Callable[..., Awaitable[Running]], owner: Callable[[str], Owner]
) -> None:
    svc = await running()
    store = svc.client.app[keys.STORE]
    notice = await unusual_notice(svc)
    site = "http://127.0.0.1:" + svc.public_url.split(":")[2].split("/")[0]
    browser = owner(site)
    url = notice["links"]["confirm"]
    status, html, _ = await browser.get(url)
    assert status == 200 and 'data-notices="on"' in html and 'id="trip-declare"' in html
    # looking changes nothing; a form without its CSRF value is refused
    assert await store.settings("alice@example.jp") == AccountSettings()
    form = read_form(html)
    assert form.action is not None
    target = urllib.parse.urljoin(url, form.action)
    status, _ = await browser.post(target, {"t": form.fields["t"], "setting": "notices_off"})
    assert status == 403
    assert await store.settings("alice@example.jp") == AccountSettings()
    status, html = await browser.post(target, {**form.fields, "setting": "notices_off"})
    assert status == 200 and 'data-result="saved"' in html
    assert (await store.settings("alice@example.jp")).notices is False
    # a login from a new country now makes no notice
    await svc.report("alice@example.jp", "192.0.2.7")
    record = await store.account_record("alice@example.jp")
    assert record is not None and record["decisions"][0]["note"] == "notices off"
    # a trip: a bad code or a past day is refused, a good one saved and shown
    for bad in (
        {"country": "France", "until": "2999-01-01"},
        {"country": "FR", "until": "2001-01-01"},
    ):
        status, _ = await browser.post(target, {**form.fields, "setting": "trip", **bad})
        assert status == 400
    fields = {**form.fields, "setting": "trip", "country": "fr", "until": "2999-12-31"}
    status, html = await browser.post(target, fields)
    assert status == 200
    chosen = await store.settings("alice@example.jp")
    assert (chosen.notices, chosen.trip_country) == (False, "FR")
    status, html, _ = await browser.get(url)
    assert 'data-notices="off"' in html and "フランス" in html and "2999-12-31まで" in html
    status, html = await browser.post(target, {**form.fields, "setting": "trip_end"})
    assert (await store.settings("alice@example.jp")).trip_country is None


async def test_the_settings_forms_are_refused_without_their_checks(
    running: Callable[..., Awaitable[Running]], owner: Callable[[str], Owner]
) -> None:
    svc = await running()
    store = svc.client.app[keys.STORE]
    notice = await unusual_notice(svc)
    site = "http://127.0.0.1:" + svc.public_url.split(":")[2].split("/")[0]
    browser = owner(site)
    url = notice["links"]["deny"]
    # a GET carrying a form's fields (a crafted link, a scanner) changes nothing
    crafted = url + "&" + urllib.parse.urlencode({"setting": "notices_off", "country": "US"})
    for _ in range(2):
        status, html, _ = await browser.get(crafted)
        assert status == 200 and 'data-notices="on"' in html
    form = read_form(html)
    assert form.action is not None
    target = urllib.parse.urljoin(url, form.action)
    trip = {"setting": "trip", "country": "US", "until": "2999-12-31"}
    tampered = form.fields["t"][:-2] + ("AA" if form.fields["t"][-2:] != "AA" else "BB")
    for status_wanted, fields, origin in (
        # no CSRF field, a forged one, a foreign site's Origin, a changed token
        (403, {"t": form.fields["t"], "setting": "notices_off"}, None),
        (403, {**form.fields, "csrf": "forged", "setting": "notices_off"}, None),
        (403, {**form.fields, **trip}, "https://evil.example"),
        (403, {**form.fields, "t": tampered, "setting": "notices_off"}, None),
        # no such setting, even beside an answer this page offers
        (403, {**form.fields, "setting": "everything_off"}, None),
        (403, {**form.fields, **trip, "setting": "everything_off", "answer": "deny"}, None),
    ):
        status, _ = await browser.post(target, fields, origin)
        assert status == status_wanted, fields
    # the right fields without the page's cookie (another browser) are refused too
    status, _ = await owner(site).post(target, {**form.fields, "setting": "notices_off"})
    assert status == 403
    assert await store.settings("alice@example.jp") == AccountSettings()
    assert await store.answer_to(notice["id"]) is None
    assert await svc.allow("alice@example.jp", ABROAD) == ALLOWED
    # the page's own forms work, from the deny link's page as well
    status, html = await browser.post(target, {**form.fields, "setting": "notices_off"})
    assert status == 200 and 'data-result="saved"' in html
    assert (await store.settings("alice@example.jp")).notices is False
    status, html = await browser.post(target, {**form.fields, "setting": "notices_on"})
    assert status == 200 and (await store.settings("alice@example.jp")).notices is True
    # a saved setting is no answer: the notice is still unanswered, nothing blocked
    assert await store.answer_to(notice["id"]) is None
    assert await svc.allow("alice@example.jp", ABROAD) == ALLOWED


async def test_a_trip_declared_on_the_page_silences_that_country_until_its_end(
    running: Callable[..., Awaitable[Running]], owner: Callable[[str], Owner]
) -> None:
    svc = await running()
    store = svc.client.app[keys.STORE]
    await store.upsert_contacts(
        [Contact("carol@example.jp", language="en", timezone="Europe/Berlin")], time.time()
    )
    await svc.notice("carol@example.jp", HOME)
    # a login from a new country: the notice whose page the owner opens
    notice = await svc.notice("carol@example.jp", "192.0.2.7")
    site = "http://127.0.0.1:" + svc.public_url.split(":")[2].split("/")[0]
    browser = owner(site)
    url = notice["links"]["confirm"]
    status, html, _ = await browser.get(url)
    assert status == 200 and '<html lang="en">' in html
    assert "Notices about unusual logins are on." in html and "No trip declared." in html
    assert 'type="password"' not in html
    form = read_form(html)
    assert form.action is not None
    target = urllib.parse.urljoin(url, form.action)
    for bad in ({"country": "UK", "until": "2999-12-31"}, {"country": "US", "until": "soon"}):
        status, html = await browser.post(target, {**form.fields, "setting": "trip", **bad})
        assert status == 400 and "GB for the United Kingdom" in html
    assert await store.settings("carol@example.jp") == AccountSettings()
    # the last day is a day of the owner's own time zone
    berlin = ZoneInfo("Europe/Berlin")
    last = (datetime.now(berlin) + timedelta(days=2)).date()
    fields = {**form.fields, "setting": "trip", "country": "us", "until": last.isoformat()}
    status, html = await browser.post(target, fields)
    assert status == 200 and "Your settings are saved." in html
    chosen = await store.settings("carol@example.jp")
    end = datetime.combine(last + timedelta(days=1), datetime.min.time(), berlin).timestamp()
    assert (chosen.notices, chosen.trip_country, chosen.trip_until) == (True, "US", end)
    status, html, _ = await browser.get(url)
    assert f"Trip declared: United States until {last.isoformat()}." in html
    assert 'id="trip-end"' in html
    # a new origin in the United States is learned without a notice
    sent = len(svc.hook.received)
    await svc.report("carol@example.jp", ABROAD)
    record = await store.account_record("carol@example.jp")
    assert record is not None and record["decisions"][0]["note"] == "on a declared trip"
    assert not record["decisions"][0]["notified"]
    assert len(svc.hook.received) == sent
    # ended on the page: the form to declare one is back
    status, html = await browser.post(target, {**form.fields, "setting": "trip_end"})
    assert status == 200
    chosen = await store.settings("carol@example.jp")
    assert (chosen.trip_country, chosen.trip_until) == (None, None)
    status, html, _ = await browser.get(url)
    assert "No trip declared." in html and 'id="trip-declare"' in html
