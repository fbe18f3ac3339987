"""Signals, recorded and named: the latch that only records them, and how a fit stopped
by one ends (:class:`FitInterrupted`).

:class:`~progrow.training.PreemptionCallback` acts on what the latch recorded at the next
optimizer step (see :mod:`progrow.training.preemption`): a signal handler runs between two
Python bytecodes, where nothing more than recording the signal is safe.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterable
from types import FrameType
from typing import Any


class FitInterrupted(SystemExit):
    """``trainer.fit`` stopped on a signal after saving a checkpoint.

    A :class:`SystemExit`, like Lightning's own ``SIGTERMException``: a script that does
    not catch it exits quietly with ``128 + signal number``, the usual status of a process
    ended by that signal.

    Attributes:
        signum: the signal that stopped the run, the same on every rank (whichever rank
            received it); a requeue signal wins over SIGINT.
        step: the optimizer step of the saved checkpoint (``trainer.global_step``).
        ckpt_path: the checkpoint written.
        requeued: whether this process requeued the SLURM job (rank 0 only).
    """

    def __init__(self, signum: int, step: int, ckpt_path: str, requeued: bool) -> None:
        super().__init__(128 + signum)
        self.signum = signum
        self.step = step
        self.ckpt_path = ckpt_path
        self.requeued = requeued

    def __str__(self) -> str:
        return (
            f"stopped by {signal_name(self.signum)} at step {self.step}; "
            f"checkpoint: {self.ckpt_path}" + ("; SLURM job requeued" if self.requeued else "")
        )


def signal_name(signum: int) -> str:
    """``"SIGUSR1"`` for 10, and so on."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


class SignalLatch:
    """Records which of ``signals`` arrived, and does nothing else.

    The handlers replace whatever was installed (Lightning's included) until
    :meth:`restore`. A second SIGINT restores the previous handlers and raises
    ``KeyboardInterrupt`` at once: the user asked twice.

    Example:
        >>> import os
        >>> latch = SignalLatch([signal.SIGUSR1])
        >>> latch.install()
        >>> os.kill(os.getpid(), signal.SIGUSR1)
        >>> latch.received
        [<Signals.SIGUSR1: 10>]
        >>> latch.restore()
    """

    def __init__(self, signals: Iterable[int]) -> None:
        self.signals = tuple(signal.Signals(s) for s in dict.fromkeys(signals))
        self.received: list[signal.Signals] = []
        self._previous: dict[signal.Signals, Any] = {}

    def install(self, signals: Iterable[int] | None = None) -> None:
        """Install the handlers for ``signals`` (default: all), again where another handler
        replaced them since; only the main thread can (elsewhere this does nothing)."""
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in self._select(signals):
            current = signal.getsignal(signum)
            if current != self._handle:
                self._previous.setdefault(signum, current)
                signal.signal(signum, self._handle)

    def restore(self, signals: Iterable[int] | None = None) -> None:
        """Put back the handlers found by the first :meth:`install` of ``signals``."""
        for signum in self._select(signals):
            if signum in self._previous:
                handler = self._previous.pop(signum)
                signal.signal(signum, handler if handler is not None else signal.SIG_DFL)

    def _select(self, signals: Iterable[int] | None) -> tuple[signal.Signals, ...]:
        return self.signals if signals is None else tuple(signal.Signals(s) for s in signals)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        sig = signal.Signals(signum)
        if sig == signal.SIGINT and sig in self.received:
            self.restore([signal.SIGINT])
            raise KeyboardInterrupt
        if sig not in self.received:
            self.received.append(sig)


__all__ = ["FitInterrupted", "SignalLatch", "signal_name"]
