"""``serve``, ``worker`` and ``migrate``: running the service and bringing its store up to date.

All three may migrate the store: they are what an upgrade runs.
"""

from __future__ import annotations

import argparse
import logging

from .. import __version__
from ..config import Config
from ..logs import setup_logging
from .cli import CommandError, Subparsers, add_command, config_command, load
from .session import store_session

log = logging.getLogger("policy_server")

LOG_LEVELS = ["debug", "info", "warning"]


def register(commands: Subparsers) -> None:
    serve = add_command(commands, "serve", serve_command, help="run the service")
    serve.add_argument("--log-level", default="info", choices=LOG_LEVELS)
    serve.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="run N processes sharing the port (SO_REUSEPORT) and the store",
    )
    serve.add_argument(
        "--no-worker",
        action="store_true",
        help="answer Dovecot only; deliveries are left to `policy-server worker` processes",
    )
    serve.add_argument(
        "--delivery",
        choices=["thread", "process"],
        default="thread",
        help="where notices are delivered: a thread of each service process (the default), or"
        " one process of their own, niced, beside the service processes",
    )
    serve.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)

    work = add_command(
        commands, "worker", worker_command, help="deliver queued notices (no HTTP listener)"
    )
    work.add_argument("--log-level", default="info", choices=LOG_LEVELS)

    add_command(commands, "migrate", migrate, help="bring the store's schema up to date")


def serve_command(args: argparse.Namespace) -> int:
    from aiohttp import web

    from ..service import eventloop, listen
    from ..service.app import create_app

    config = load(args.config)
    setup_logging(args.log_level, config.logging.format)
    if args.workers < 1:
        raise CommandError(f"--workers must be 1 or more, not {args.workers}")
    own_process = args.delivery == "process" and not args.no_worker
    if args.workers > 1 or own_process:
        from ..service.processes import GiveUp, supervise

        config_args = ["-c", args.config] if args.config else []
        child = ["serve", "--log-level", args.log_level, "--reuse-port"]
        if args.no_worker or own_process:
            child.append("--no-worker")
        delivery = ["worker", "--log-level", args.log_level, *config_args] if own_process else None
        try:
            return supervise([*child, *config_args], args.workers, config, delivery)
        except (listen.ListenError, GiveUp) as exc:
            raise CommandError(str(exc)) from None
    address = config.server.listen
    try:
        # bound before anything starts: an address in use is said at once, in one line
        sockets = listen.bind(address, reuse_port=args.reuse_port)
    except listen.ListenError as exc:
        raise CommandError(str(exc)) from None

    async def start_listening(_app: web.Application) -> None:
        # last of the start-up: the kernel queues no connection for a service still starting
        listen.listen(address, sockets)

    app = create_app(config, run_worker=not args.no_worker, reuse_port=args.reuse_port)
    app.on_startup.append(start_listening)
    loop = eventloop.new_event_loop()
    log.debug("event loop: %s", eventloop.loop_name(loop))
    eventloop.favour_the_loop()
    try:
        web.run_app(
            app,
            loop=loop,
            sock=sockets,
            access_log=logging.getLogger("aiohttp.access") if config.server.access_log else None,
            # called once the listener is up: then systemd may start Dovecot
            print=lambda _message: _listening(config, args.config),
            shutdown_timeout=10,
        )
    except listen.ListenError as exc:
        raise CommandError(str(exc)) from None
    finally:
        listen.close(sockets)
    return 0


def _listening(config: Config, config_path: str | None) -> None:
    from ..service.systemd import notify

    log.info(
        "policy-server %s listening on %s (config: %s)",
        __version__,
        config.server.listen,
        config_path or "embedded defaults",
    )
    notify("READY=1", f"STATUS=answering on {config.server.listen}")


def worker_command(args: argparse.Namespace) -> int:
    from ..delivery.process import run_worker
    from ..service import eventloop
    from ..store.base import StoreError

    config = load(args.config)
    setup_logging(args.log_level, config.logging.format)
    try:
        # the worker opens (and migrates) the store itself, as the service does
        eventloop.run(run_worker(config))
    except StoreError as exc:
        raise CommandError(f"store unavailable: {exc}") from exc
    return 0


@config_command
async def migrate(config: Config, args: argparse.Namespace) -> int:
    setup_logging("info")
    async with store_session(config, migrate=True):
        pass
    print(f"{config.storage.backend} store schema up to date")
    return 0
