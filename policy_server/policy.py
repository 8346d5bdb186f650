"""The decision: a pure function of an account's history, a login's origin, its time and the policy.

Nothing here reads a clock or a file, so the same inputs always give the same decision (the
replay command and the property tests rely on that).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from .config import PolicyConfig
from .model import History, KnownOrigin, Origin, Reason

DAY_S = 86400.0

# The reason a new origin inside a known network gets instead of new_country / new_provider.
NETWORK_REASONS = {
    "vpn": Reason.VIA_VPN,
    "hosting": Reason.VIA_HOSTING,
    "mail-app": Reason.VIA_MAIL_APP,
    "corporate": Reason.VIA_CORPORATE,
}


@dataclass(frozen=True, slots=True)
class Decision:
    """What the policy made of one successful login.

    ``reasons`` are all reasons found; ``notify`` the subset that makes a notice; ``note`` says
    why a found reason makes none (learning, a trusted network, ``policy.notify``).
    """

    reasons: tuple[Reason, ...] = ()
    notify: tuple[Reason, ...] = ()
    note: str = ""

    @property
    def unusual(self) -> bool:
        return bool(self.reasons)


KNOWN = Decision()


def normalize_org(name: str) -> str:
    """An AS organisation name reduced for comparison: "NTT DOCOMO, INC." == "ntt docomo inc"."""
    return re.sub(r"[^0-9a-z]+", "", name.casefold())


def _asn(provider: str | None) -> int | None:
    if provider and provider.startswith("AS") and provider[2:].isdigit():
        return int(provider[2:])
    return None


def provider_identities(
    provider: str | None, as_org: str | None, policy: PolicyConfig
) -> frozenset[str]:
    """Every name a provider is known by: its ASN, its ASN group, its organisation."""
    if provider is None:
        return frozenset()
    names = {provider}
    asn = _asn(provider)
    if asn is not None:
        for index, group in enumerate(policy.provider_groups):
            if asn in group:
                names.add(f"group:{index}")
    if policy.same_org_same_provider and as_org and normalize_org(as_org):
        names.add(f"org:{normalize_org(as_org)}")
    return frozenset(names)


def live_origins(history: History, policy: PolicyConfig) -> list[KnownOrigin]:
    """The origins that still count as known.

    An origin ages by how long the account has been used *without it*: its last use compared
    with the account's latest use of any origin, not with the clock. A user back from a long
    pause finds their usual origins known; one who moved on forgets the old ones.
    """
    if not history.origins:
        return []
    latest = max(known.last_seen for known in history.origins)
    horizon = policy.forget_after_days * DAY_S
    return [known for known in history.origins if latest - known.last_seen <= horizon]


def learning(history: History, at: float, policy: PolicyConfig) -> bool:
    """Whether the account is still in its learning period."""
    if not history.origins:
        return False
    if policy.learning_days > 0:
        first = min(known.first_seen for known in history.origins)
        if at - first < policy.learning_days * DAY_S:
            return True
    logins = sum(known.count for known in history.origins)
    return policy.learning_logins > 0 and logins < policy.learning_logins


def _new_reasons(live: Iterable[KnownOrigin], origin: Origin, policy: PolicyConfig) -> list[Reason]:
    live = list(live)
    found: list[Reason] = []
    if origin.country is not None and all(known.country != origin.country for known in live):
        found.append(Reason.NEW_COUNTRY)
    mine = provider_identities(origin.provider, origin.as_org, policy)
    if mine:
        seen: set[str] = set()
        for known in live:
            seen |= provider_identities(known.provider, known.as_org, policy)
        if not mine & seen:
            found.append(Reason.NEW_PROVIDER)
    return found


#: known-network categories whose logins are programs on servers, not the owner
SERVER_NETWORKS = frozenset({"mail-app", "hosting"})


def placeable(origin: Origin | KnownOrigin) -> bool:
    """Whether an origin says where the owner is: its country or its provider is known, and it
    is not a mail app's or a hosting network's (a fetcher logging in for the owner)."""
    return (origin.country is not None or origin.provider is not None) and (
        origin.network not in SERVER_NETWORKS
    )


def decide(history: History, origin: Origin, at: float, policy: PolicyConfig) -> Decision:
    """Reason codes for a successful login from ``origin`` at ``at`` (unix time).

    * ``first_use``: the account has no history at all, or none that places its owner (see
      ``placeable``: only unresolvable origins, or a mail app's or hosting servers) and this
      origin does;
    * ``new_country``: the country is known and no live origin of the account has it;
    * ``new_provider``: the provider is known and no live origin has it (or, as configured, its
      ASN group or AS organisation);
    * ``via_vpn`` and the other network reasons replace the two above for a new origin inside
      an admin's known network; a ``trusted`` network never gives a reason.

    An unknown country or provider is never a reason by itself: unresolvable is not suspicious.
    """
    if origin.network == "trusted":
        return Decision(note=f"trusted network {origin.network_label or ''}".strip())
    live = live_origins(history, policy) if not history.is_new else ()
    if history.is_new or (placeable(origin) and not any(placeable(k) for k in live)):
        # the first origin that can place the owner is the account's first use, whatever
        # unplaceable or fetcher logins came before it
        reasons: tuple[Reason, ...] = (Reason.FIRST_USE,)
    else:
        exact = history.find(origin)
        if exact is not None and exact in live:
            return KNOWN
        found = _new_reasons(live, origin, policy)
        if not found:
            return KNOWN
        via = NETWORK_REASONS.get(origin.network or "")
        reasons = (via,) if via is not None else tuple(found)
    notify = tuple(r for r in reasons if r in policy.notify)
    note = ""
    if reasons != (Reason.FIRST_USE,) and learning(history, at, policy):
        notify, note = (), "learning"
    elif not notify:
        note = "not in policy.notify"
    return Decision(reasons, notify, note)


def exempted(decision: Decision) -> Decision:
    """A login of an account ``[accounts] exempt`` names: the same reasons, learned, no
    notice."""
    if not decision.notify:
        return decision
    return Decision(decision.reasons, (), "exempt account")


def from_blocked(decision: Decision, block: str) -> Decision:
    """A successful login from an origin the account blocked: a notice in any case (learning
    and ``policy.notify`` do not hold it back), with whatever else the policy found."""
    return Decision(
        (Reason.BLOCKED_ORIGIN, *decision.reasons),
        (Reason.BLOCKED_ORIGIN, *decision.notify),
        f"from a blocked {block}",
    )


def repeat_writes(
    known: KnownOrigin, at: float, touch_after: float, coalesce_s: float
) -> tuple[bool, bool]:
    """What a login at ``at`` from the stored origin ``known`` writes, when nothing about it is
    unusual: ``(join_pending, touch)``. ``join_pending``: the origin is younger than the
    coalescing window, so the login's service joins the origin's notice while that waits.
    ``touch``: the origin was last seen ``touch_after`` or more ago, so its ``last_seen`` and
    count are written. Neither: a fresh repeat, which writes nothing at all."""
    return at - known.first_seen < coalesce_s, at - known.last_seen >= touch_after


def fresh_repeat(
    known: KnownOrigin | None, at: float, touch_after: float, coalesce_s: float
) -> bool:
    """A known origin seen less than ``touch_after`` ago, whose first use is older than the
    coalescing window: the login writes nothing (answered without the store's writer)."""
    if known is None:
        return False
    join_pending, touch = repeat_writes(known, at, touch_after, coalesce_s)
    return not (join_pending or touch)
