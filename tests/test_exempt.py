"""[accounts] exempt: service accounts' logins are learned and never make a notice."""

from __future__ import annotations

import io
import time
from collections.abc import Awaitable, Callable

import pytest
from pages_support import ABROAD, HOME, Running, running
from pydantic import ValidationError

from policy_server.accounts import is_exempt
from policy_server.commands.history import history_show
from policy_server.config import AccountsConfig
from policy_server.service import keys
from policy_server.store.base import Block, BlockKind, BlockTarget

__all__ = ["running"]  # fixture


def test_patterns_match_account_keys_as_logins_are_normalised() -> None:
    config = AccountsConfig(exempt=("NoReply@*", "svc-*", "backup?@example.jp"))
    for account in ("noreply@example.jp", "svc-backup", "backup1@example.jp"):
        assert is_exempt(account, config), account
    for account in ("alice@example.jp", "xsvc-backup", "backup12@example.jp", "reply@x"):
        assert not is_exempt(account, config), account
    assert not is_exempt("svc-backup", AccountsConfig())
    with pytest.raises(ValidationError, match="must not be empty"):
        AccountsConfig(exempt=(" ",))


async def test_an_exempt_account_learns_its_origins_without_notices(
    running: Callable[..., Awaitable[Running]],
) -> None:
    svc = await running(accounts={"exempt": ["noreply@*", "svc-*"]})
    store = svc.client.app[keys.STORE]
    for login in ("NoReply@Example.jp", "svc-backup"):
        await svc.report(login, HOME)
        await svc.report(login, ABROAD)
    # an account the patterns do not name is notified as ever
    notice = await svc.notice("alice@example.jp", HOME)
    assert notice["reasons"] == ["first_use"] and notice["login"] == "alice@example.jp"
    for account in ("noreply@example.jp", "svc-backup"):
        record = await store.account_record(account)
        assert record is not None
        assert {row["country"] for row in record["origins"]} == {"JP", "US"}
        assert record["notices"] == []
        first, abroad = sorted(record["decisions"], key=lambda row: row["at"])
        assert first["reasons"] == ["first_use"] and not first["notified"]
        assert first["note"] == "exempt account"
        assert set(abroad["reasons"]) == {"new_country", "new_provider"}
        assert not abroad["notified"] and abroad["note"] == "exempt account"
    assert [n["login"] for n in svc.hook.received] == ["alice@example.jp"]
    out = io.StringIO()
    config = svc.client.app[keys.CONFIG]
    assert await history_show(config, "svc-backup", out) == 0
    assert "exempt from notices ([accounts] exempt)" in out.getvalue()
    out = io.StringIO()
    assert await history_show(config, "alice@example.jp", out) == 0
    assert "exempt" not in out.getvalue()


async def test_a_blocked_origin_of_an_exempt_account_is_still_notified(
    running: Callable[..., Awaitable[Running]],
) -> None:
    svc = await running(accounts={"exempt": ["svc-*"]})
    await svc.report("svc-backup", HOME)
    now = time.time()
    abroad = BlockTarget(BlockKind.PROVIDER, "AS64510", "US")  # ABROAD's provider
    await svc.client.app[keys.BLOCKS].add(Block("svc-backup", abroad, now, now + 86400), now)
    notice = await svc.notice("svc-backup", ABROAD)
    assert notice["reasons"][0] == "blocked_origin"
