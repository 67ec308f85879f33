"""The user-facing error family and the signals dream3d turns into clean stops.

Every error a user can cause (a bad key, a bad file, a run folder in use, a non-finite loss) is a
:class:`Dream3DError`: the command line prints its message as one line and exits with ``exit_code``.
SIGTERM (cluster schedulers, ``docker stop``) raises :class:`Terminated`, a ``KeyboardInterrupt``, so it
takes the same path as Ctrl-C: checkpoint, truthful summary, resume hint; the exit code then says which
signal it was (130 for SIGINT, 143 for SIGTERM).
"""

from __future__ import annotations

import os
import signal


class Dream3DError(Exception):
    """A one-line, user-facing error. ``exit_code``: 2 for bad input, 1 for a failed run."""

    exit_code = 2


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived: stop like Ctrl-C does."""


def _raise_terminated(signum, frame) -> None:
    raise Terminated()


def install_signal_handlers() -> None:
    """SIGTERM raises :class:`Terminated`; SIGINT raises KeyboardInterrupt (Python's default)."""
    signal.signal(signal.SIGTERM, _raise_terminated)
    signal.signal(signal.SIGINT, signal.default_int_handler)


def signal_exit_code(exc: BaseException) -> int:
    """128 + the signal's number, as a shell reports a process ended by it."""
    return 128 + (signal.SIGTERM if isinstance(exc, Terminated) else signal.SIGINT)


def fault_point(phase: str) -> None:
    """Fault injection for the signal tests: with ``DREAM3D_SIGNAL_AT=<phase>:<INT|TERM>`` in the
    environment, the process sends itself that real signal when it reaches ``phase`` (startup, prior,
    init, export). Does nothing otherwise."""
    spec = os.environ.get("DREAM3D_SIGNAL_AT", "")
    if spec.partition(":")[0] == phase:
        os.kill(os.getpid(), getattr(signal, "SIG" + (spec.partition(":")[2] or "INT")))
