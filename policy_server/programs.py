"""Running a local program with a document on its standard input, bounded in time.

Used by the command channel (one notice per run) and by ``[response] command`` (an owner's
"It wasn't me"). The program gets its own process group, so a timeout also stops what it
started.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Sequence
from dataclasses import dataclass

#: how much of a program's standard error a message quotes
STDERR_CHARS = 300


class ProgramError(Exception):
    """The program could not be started, or did not exit in time (it was killed)."""


@dataclass(frozen=True, slots=True)
class Exited:
    """How a program ended: its exit status and the start of its standard error, on one
    line."""

    code: int
    stderr: str


async def run_program(argv: Sequence[str], data: bytes, timeout_s: float) -> Exited:
    """Run ``argv`` with ``data`` on its standard input; its output is discarded.

    Raises :class:`ProgramError` when it cannot start or runs longer than ``timeout_s``.
    """
    try:
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
    except OSError as exc:
        raise ProgramError(f"cannot start: {exc}") from None
    try:
        async with asyncio.timeout(timeout_s):
            _, stderr = await process.communicate(data)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        await process.wait()
        raise ProgramError(f"no exit within {timeout_s:g}s, killed") from None
    detail = " ".join(stderr.decode("utf-8", "replace").split())[:STDERR_CHARS]
    return Exited(process.returncode if process.returncode is not None else -1, detail)
