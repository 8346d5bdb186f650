"""The geo-database guard: a changed GeoIP or ASN file is tried on known origins first.

A broken or mislabelled database makes every account's usual origin look new at once. Before a
changed file is trusted, a sample of known origins is resolved again; when too many would change
country or provider, the change is refused (on reload the old data stays) or its notices are
held, and the operators are alerted.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import time
from dataclasses import dataclass
from typing import Any

from ..config import GeoGuardConfig, GeoipConfig
from ..origin.resolver import OriginResolver
from ..store.base import OperatorStore
from .breaker import GEO_HOLD, AdminAlerts

log = logging.getLogger("policy_server.geo_guard")

GEO_FILES = "geo_files"


def fingerprint(config: GeoipConfig) -> dict[str, Any]:
    """What identifies the geo data in use: each file's path, size and modification time."""
    found: dict[str, Any] = {"bundled": config.bundled}
    for key in ("country_db", "asn_db", "asn_names"):
        path = getattr(config, key)
        if not path:
            continue
        try:
            stat = os.stat(path)
        except OSError:
            found[key] = [path, None, None]
        else:
            found[key] = [path, stat.st_size, stat.st_mtime_ns]
    return found


@dataclass(frozen=True, slots=True)
class GuardResult:
    checked: int
    changed: int
    examples: list[str]

    @property
    def share(self) -> float:
        return self.changed / self.checked if self.checked else 0.0


async def try_on_known_origins(
    store: OperatorStore, resolver: OriginResolver, sample: int
) -> GuardResult:
    """Resolve a sample of known origins with ``resolver``; count those that would change."""
    origins = await store.sample_origins(sample)
    changed = 0
    examples: list[str] = []
    for prefix, country, provider in origins:
        address = str(ipaddress.ip_network(prefix, strict=False).network_address)
        now = resolver.resolve(address)
        if (now.country, now.provider) != (country, provider):
            changed += 1
            if len(examples) < 5:
                examples.append(
                    f"{prefix}: {country or '?'} {provider or '?'} -> "
                    f"{now.country or '?'} {now.provider or '?'}"
                )
    return GuardResult(len(origins), changed, examples)


async def check_geo_change(
    store: OperatorStore,
    resolver: OriginResolver,
    geoip: GeoipConfig,
    config: GeoGuardConfig,
    alerts: AdminAlerts,
    *,
    reload: bool,
) -> bool:
    """Whether ``resolver`` (just opened on ``geoip``) may be used.

    True when the files did not change since they were last accepted, when there is too little
    history to judge, or when few enough known origins change. Otherwise the operators are
    alerted, and the answer is False on a reload with ``action = "refuse"`` (keep the old data);
    in every other case the owner notices are held and the answer is True.
    """
    now = time.time()
    current = fingerprint(geoip)
    accepted = await store.control(GEO_FILES)
    if accepted is not None and accepted.get("files") == current:
        return True
    if not config.enabled or accepted is None:
        await store.set_control(GEO_FILES, {"files": current}, now)
        return True
    result = await try_on_known_origins(store, resolver, config.sample)
    if result.checked < 10 or result.share <= config.max_changed:
        log.info(
            "geo data changed; %d of %d known origins resolve differently: accepted",
            result.changed,
            result.checked,
        )
        await store.set_control(GEO_FILES, {"files": current}, now)
        return True
    cause = (
        f"{result.changed} of {result.checked} known origins ({result.share:.0%}) would change "
        f"country or provider, over the limit of {config.max_changed:.0%}"
    )
    refuse = reload and config.action == "refuse"
    outcome = "refused, the data in use stays" if refuse else "owner notices are held"
    log.error("geo data changed: %s; %s; e.g. %s", cause, outcome, "; ".join(result.examples))
    if not refuse:
        await store.set_control(
            GEO_HOLD,
            {"hold": True, "cause": cause, "since": now, "files": current},
            now,
        )
    await alerts.send(
        "policy-server: changed geo data " + ("refused" if refuse else "held"),
        f"The geo data changed ({current}).\n{cause}.\nExamples:\n  "
        + "\n  ".join(result.examples)
        + f"\nOutcome: {outcome}.\n"
        + (
            ""
            if refuse
            else "After checking the files, `policy-server breaker close` accepts them and "
            "ends the hold; `outbox release` or `outbox discard` deals with held notices.\n"
        ),
    )
    return not refuse
