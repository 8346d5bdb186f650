"""One Dovecot talking to one policy-server that delivers to one sink."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from builds import DovecotBuild, Scenario
from harness import Dovecot, PolicyService, WebhookSink

# The API header both sides use unless a scenario says otherwise: the shipped files' secret
# ("change-me") is the one thing besides the URL and the nonce an admin sets.
API_HEADER = "X-API-Key: e2e-secret"


@dataclass
class World:
    """One Dovecot talking to one policy-server that delivers to one sink."""

    dovecot: Dovecot
    service: PolicyService
    sink: WebhookSink

    @property
    def major(self) -> str:
        return self.dovecot.build.major


def start_world(
    build: DovecotBuild,
    directory: Path,
    geo: dict[str, Path],
    *,
    api_header: str = API_HEADER,
    hold_s: float = 0.0,
    scenario: Scenario | None = None,
    web: bool = False,
    metrics: bool = False,
) -> World:
    directory.mkdir(parents=True, exist_ok=True)
    sink = WebhookSink()
    sink.start()
    service = PolicyService(
        directory, geo, sink.url, api_header=api_header, hold_s=hold_s, web=web, metrics=metrics
    )
    service.start()
    dovecot = Dovecot(build, directory / "dovecot", service.url, api_header, scenario or Scenario())
    try:
        dovecot.start()
    except BaseException:
        service.stop()
        sink.stop()
        raise
    return World(dovecot, service, sink)


def stop_world(world: World) -> None:
    world.dovecot.stop()
    world.service.stop()
    world.sink.stop()
