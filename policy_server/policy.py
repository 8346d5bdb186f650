"""The decision: a pure function of an account's history, a login's origin, its time and the policy.

Nothing here reads a clock or a file, so the same inputs always give the same decision (the
replay command and the property tests rely on that).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, replace

from .client import Client
from .config import CompromiseConfig, PolicyConfig
from .model import History, KnownOrigin, Location, Origin, Reason, Travel

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
    # impossible_travel: the journey; many_origins: the providers and countries it saw
    travel: Travel | None = None
    spread: tuple[str, ...] = ()
    # every name the login's provider is known by (``provider_identities``): a notice of
    # another login of the account from the same place may take this one in
    identities: frozenset[str] = frozenset()

    @property
    def unusual(self) -> bool:
        return bool(self.reasons)

    @property
    def urgent(self) -> bool:
        """Whether it names a reason neither learning nor quiet hours hold back."""
        return any(reason in URGENT for reason in self.notify)


KNOWN = Decision()

#: reasons that say the account may be in someone else's hands: notified while the account
#: learns, on a trip, outside quiet hours, and never merged into another login's notice
URGENT = frozenset({Reason.BLOCKED_ORIGIN, Reason.IMPOSSIBLE_TRAVEL, Reason.MANY_ORIGINS})

#: the mean Earth radius, in km
EARTH_KM = 6371.0088


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


def distance_km(a: Location, b: Location) -> float:
    """The great-circle distance between two places (haversine)."""
    la1, la2 = math.radians(a.latitude), math.radians(b.latitude)
    dlat = la2 - la1
    dlon = math.radians(b.longitude - a.longitude)
    h = math.sin(dlat / 2) ** 2 + math.cos(la1) * math.cos(la2) * math.sin(dlon / 2) ** 2
    return 2 * EARTH_KM * math.asin(min(1.0, math.sqrt(h)))


def impossible_travel(
    live: Iterable[KnownOrigin], origin: Origin, at: float, policy: PolicyConfig
) -> Travel | None:
    """The journey from the account's latest placed origin to ``origin``, when it needs more
    than ``max_speed_kmh``: the distance less both accuracy radii, over the time since that
    origin's last login. Never from or to an unknown location, a known network, or a confirmed
    origin (the owner said the login from there was theirs); only between two countries."""
    if policy.max_speed_kmh <= 0 or origin.location is None or origin.network is not None:
        return None
    located = [k for k in live if k.location is not None and k.network is None]
    if not located:
        return None
    last = max(located, key=lambda k: k.last_seen)
    # within one country the data places networks too loosely (a carrier's IPv6 at its head
    # office, its IPv4 egress in the user's city) for a journey to mean anything
    if last.confirmed is not None or last.location is None or last.country == origin.country:
        return None
    km = distance_km(last.location, origin.location)
    km -= last.location.radius_km + origin.location.radius_km
    hours = max(0.0, at - last.last_seen) / 3600
    if km <= 0 or km <= policy.max_speed_kmh * hours:
        return None
    return Travel(last.country, km, hours)


#: known networks whose logins are the admin's own or their mail apps', never a botnet's
BENIGN_NETWORKS = frozenset({"trusted", "mail-app", "corporate"})


def spread(
    live: Iterable[KnownOrigin], origin: Origin, at: float, compromise: CompromiseConfig
) -> tuple[str, ...]:
    """The providers and countries of the account's logins within ``[compromise] window_s``
    with this one, when either count reaches ``[compromise] providers`` (else ``()``)."""
    if compromise.providers <= 0 or origin.network in BENIGN_NETWORKS:
        return ()
    since = at - compromise.window_s
    recent = [
        (k.country, k.provider)
        for k in live
        if k.last_seen >= since and k.network not in BENIGN_NETWORKS
    ]
    recent.append((origin.country, origin.provider))
    providers = {p for _, p in recent if p}
    countries = {c for c, _ in recent if c}
    if max(len(providers), len(countries)) < compromise.providers:
        return ()
    return tuple(sorted({f"{c or '??'} {p or 'unknown'}" for c, p in recent}))


def _client_reason(live: Iterable[KnownOrigin], client: Client | None) -> tuple[Reason, ...]:
    """new_client: the login's mail program is one no origin of the account has seen, while
    the account's origins know its programs (older rows, and programs sending no ID, know
    none)."""
    if client is None:
        return ()
    seen = {name for known in live for name in known.clients}
    return (Reason.NEW_CLIENT,) if seen and client.name not in seen else ()


#: how long an account's many_origins alert holds before the pattern alerts again
ALERT_EVERY_S = DAY_S


def decide(
    history: History,
    origin: Origin,
    at: float,
    policy: PolicyConfig,
    client: Client | None = None,
    compromise: CompromiseConfig | None = None,
) -> Decision:
    """Reason codes for a successful login from ``origin`` at ``at`` (unix time).

    * ``first_use``: the account has no history at all, or none that places its owner (see
      ``placeable``: only unresolvable origins, or a mail app's or hosting servers) and this
      origin does;
    * ``new_country``: the country is known and no live origin of the account has it;
    * ``new_provider``: the provider is known and no live origin has it (or, as configured, its
      ASN group or AS organisation);
    * ``via_vpn`` and the other network reasons replace the two above for a new origin inside
      an admin's known network; a ``trusted`` network never gives a reason;
    * ``new_client``: with another reason, a mail program the account never used (alone it is
      recorded and, unless ``new_client_alone``, makes no notice);
    * ``impossible_travel``: a new country or provider too far from the latest placed origin
      for the time since (see ``impossible_travel``);
    * ``many_origins``: the account's logins of the last ``[compromise] window_s`` came from
      ``[compromise] providers`` providers or countries (once a day per account).

    An unknown country or provider is never a reason by itself: unresolvable is not suspicious.
    The account's settings apply last: notices off, or a trip to the login's country, learn
    the origin without a notice (the urgent reasons excepted on a trip).
    """
    if origin.network == "trusted":
        return Decision(note=f"trusted network {origin.network_label or ''}".strip())
    live = live_origins(history, policy) if not history.is_new else []
    settings = history.settings
    wide: tuple[str, ...] = ()
    if compromise is not None and (
        settings.alerted_at is None or at - settings.alerted_at >= ALERT_EVERY_S
    ):
        wide = spread(live, origin, at, compromise)
    travel: Travel | None = None
    if history.is_new or (placeable(origin) and not any(placeable(k) for k in live)):
        # the first origin that can place the owner is the account's first use, whatever
        # unplaceable or fetcher logins came before it
        reasons: tuple[Reason, ...] = (Reason.FIRST_USE,)
    else:
        exact = history.find(origin)
        found: list[Reason] = []
        if exact is None or exact not in live:
            found = _new_reasons(live, origin, policy)
            if found:
                travel = impossible_travel(live, origin, at, policy)
            found += _client_reason(live, client)
        via = NETWORK_REASONS.get(origin.network or "")
        if via is not None and set(found) & {Reason.NEW_COUNTRY, Reason.NEW_PROVIDER}:
            found = [via, *(r for r in found if r is Reason.NEW_CLIENT)]
        if travel is not None:
            found.append(Reason.IMPOSSIBLE_TRAVEL)
        reasons = tuple(found)
    if wide:
        reasons = (*reasons, Reason.MANY_ORIGINS)
    if not reasons:
        return KNOWN
    notify = tuple(r for r in reasons if r in policy.notify)
    note = ""
    if notify == (Reason.NEW_CLIENT,) and not policy.new_client_alone:
        notify, note = (), "new_client alone"
    urgent = tuple(r for r in notify if r in URGENT)
    # whether anything is left for learning or a trip to hold back
    held = notify != urgent or not notify
    if not settings.notices:
        notify, note = (), "notices off"
    elif held and settings.travelling(origin.country, at):
        notify, note = urgent, "on a declared trip"
    elif held and reasons != (Reason.FIRST_USE,) and learning(history, at, policy):
        notify, note = urgent, "learning"
    elif not notify and not note:
        note = "not in policy.notify"
    # the provider's names are for joining another notice: only a notifying login needs them
    identities = (
        provider_identities(origin.provider, origin.as_org, policy) if notify else frozenset()
    )
    return Decision(reasons, notify, note, travel, wide, identities)


def exempted(decision: Decision) -> Decision:
    """A login of an account ``[accounts] exempt`` names: the same reasons, learned, no
    notice."""
    if not decision.notify:
        return decision
    return replace(decision, notify=(), note="exempt account")


def from_blocked(decision: Decision, block: str) -> Decision:
    """A successful login from an origin the account blocked: a notice in any case (learning
    and ``policy.notify`` do not hold it back), with whatever else the policy found."""
    return replace(
        decision,
        reasons=(Reason.BLOCKED_ORIGIN, *decision.reasons),
        notify=(Reason.BLOCKED_ORIGIN, *decision.notify),
        note=f"from a blocked {block}",
    )


def repeat_writes(
    known: KnownOrigin,
    at: float,
    touch_after: float,
    coalesce_s: float,
    client: Client | None = None,
) -> tuple[bool, bool]:
    """What a login at ``at`` from the stored origin ``known`` writes, when nothing about it is
    unusual: ``(join_pending, touch)``. ``join_pending``: the origin is younger than the
    coalescing window, so the login's service joins the origin's notice while that waits.
    ``touch``: the origin was last seen ``touch_after`` or more ago, so its ``last_seen`` and
    count are written (and so is a mail program the origin has not seen yet). Neither: a fresh
    repeat, which writes nothing at all."""
    touch = at - known.last_seen >= touch_after or (
        client is not None and client.name not in known.clients
    )
    return at - known.first_seen < coalesce_s, touch


def fresh_repeat(
    known: KnownOrigin | None,
    at: float,
    touch_after: float,
    coalesce_s: float,
    client: Client | None = None,
) -> bool:
    """A known origin seen less than ``touch_after`` ago, whose first use is older than the
    coalescing window: the login writes nothing (answered without the store's writer)."""
    if known is None:
        return False
    join_pending, touch = repeat_writes(known, at, touch_after, coalesce_s, client)
    return not (join_pending or touch)
