"""Interrupt points inside long kernels: a cancel check the caller installs for a scope.

A single UNet or VAE call at a large size can run for minutes, so checking between sampler
steps is not enough. The networks call :func:`check_interrupt` between their blocks (UNet
input/middle/output blocks, VAE levels and blocks, decode tiles, attention query chunks);
it calls whatever check the caller installed with :func:`interruptible` (which raises to
stop, e.g. the engine's ``Cancelled``) and does nothing when none is installed.

The check lives in a ``ContextVar``, so it follows the thread (or task) that installed it:
two runs in two threads never see each other's check, and sgm needs no engine import.
Under ``torch.compile`` the checks are traced away (see :func:`check_interrupt`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch

InterruptCheck = Callable[[], None]  # raises to interrupt; returns to go on

_CHECK: ContextVar[InterruptCheck | None] = ContextVar("sgm_interrupt_check", default=None)


@contextmanager
def interruptible(check: InterruptCheck | None) -> Iterator[None]:
    """Run the body with ``check`` called at every interrupt point (None: no checks)."""
    token = _CHECK.set(check)
    try:
        yield
    finally:
        _CHECK.reset(token)


def check_interrupt() -> None:
    """Call the installed check (it raises to interrupt); cheap when none is installed."""
    if torch.compiler.is_compiling():
        return  # a compiled graph cannot call back into Python (26 graph breaks per UNet call)
    check = _CHECK.get()
    if check is not None:
        check()
