"""One Dovecot talking to one policy-server that delivers to one sink."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from harness import Dovecot, PolicyService, WebhookSink, example_policy_settings


@dataclass
class World:
    """One Dovecot talking to one policy-server that delivers to one sink."""

    dovecot: Dovecot
    service: PolicyService
    sink: WebhookSink


def start_world(
    directory: Path,
    geo: dict[str, Path],
    *,
    api_header: str = "",
    dovecot_header: str = "",
    hold_s: float = 0.0,
    **policy: str,
) -> World:
    directory.mkdir(parents=True, exist_ok=True)
    sink = WebhookSink()
    sink.start()
    service = PolicyService(directory, geo, sink.url, api_header=api_header, hold_s=hold_s)
    service.start()
    settings = example_policy_settings()
    settings["auth_policy_server_url"] = service.url
    if dovecot_header:
        settings["auth_policy_server_api_header"] = dovecot_header
    settings.update(policy)
    dovecot = Dovecot(directory / "dovecot", settings)
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
