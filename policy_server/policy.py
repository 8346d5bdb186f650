"""The decision: a pure function of an account's history, a login's origin and the policy."""

from __future__ import annotations

from dataclasses import dataclass

from .config import PolicyConfig
from .model import History, Origin, Reason


@dataclass(frozen=True, slots=True)
class Decision:
    """What the policy made of one successful login.

    ``reasons`` are all reasons found; ``notify`` the subset the config says to notify.
    """

    reasons: tuple[Reason, ...] = ()
    notify: tuple[Reason, ...] = ()

    @property
    def unusual(self) -> bool:
        return bool(self.reasons)


KNOWN = Decision()


def decide(history: History, origin: Origin, policy: PolicyConfig) -> Decision:
    """Reason codes for a successful login from ``origin``.

    * ``first_use``: the account has no history at all;
    * ``new_country``: the country is known and the account was never seen from it;
    * ``new_provider``: the provider (ASN, else AS organisation) is known and never seen.

    An unknown country or provider is never a reason by itself: unresolvable is not suspicious.
    """
    if history.is_new:
        reasons: tuple[Reason, ...] = (Reason.FIRST_USE,)
    elif history.find(origin) is not None:
        return KNOWN
    else:
        found: list[Reason] = []
        if origin.country is not None and all(
            known.country != origin.country for known in history.origins
        ):
            found.append(Reason.NEW_COUNTRY)
        provider = origin.provider
        if provider is not None and all(known.provider != provider for known in history.origins):
            found.append(Reason.NEW_PROVIDER)
        if not found:
            return KNOWN
        reasons = tuple(found)
    return Decision(reasons, tuple(r for r in reasons if r in policy.notify))
