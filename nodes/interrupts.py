"""Every built-in node runs with the run's cancel check installed for ``sgm.nets.interrupt``.

The scheduler checks for cancellation between nodes and a sampler between steps, but one
UNet evaluation, VAE decode or attention call at a large size can take minutes. Wrapping a
node spec here installs ``ctx.check_cancelled`` (which raises the engine's ``Cancelled``)
as the interrupt check while the node runs, so the networks' block-level checks stop it
within about a block's time. Nodes without a ``Context`` parameter get a hidden one.
"""

from __future__ import annotations

import functools
from dataclasses import replace
from typing import Any

from engine.api import NodeSpec

HIDDEN_CONTEXT = "_interrupt_context"  # the keyword the scheduler passes the context under


def interruptible_spec(spec: NodeSpec) -> NodeSpec:
    """``spec`` whose function runs inside ``sgm.nets.interrupt.interruptible(ctx.check_cancelled)``."""
    original = spec.function
    own = spec.context_param

    @functools.wraps(original)
    def run(**kwargs: Any) -> Any:
        from sgm.nets.interrupt import interruptible

        ctx = kwargs.get(own) if own else kwargs.pop(HIDDEN_CONTEXT, None)
        with interruptible(ctx.check_cancelled if ctx is not None else None):
            return original(**kwargs)

    return replace(spec, function=run, context_param=own or HIDDEN_CONTEXT)
