"""An interrupt lands inside one network call, not only between sampler steps."""

import threading
import time

import pytest
import torch

from sgm.nets.interrupt import check_interrupt, interruptible
from sgm.sampling.denoisers import model_sampling_for
from sgm.sampling.sample import SamplingCancelled, sample
from tests.sgm.model_factories import TINY_CONTEXT_DIM, tiny_unet, tiny_vae


class Stop(Exception):
    pass


def run_and_interrupt(call, after: float) -> tuple[float, int, float]:
    """Run ``call`` in a thread with a check that raises once an event is set ``after`` seconds
    in; returns (seconds from the interrupt to the end, checks passed, seconds they took)."""
    cancel = threading.Event()
    checks: list[float] = []
    outcome: list[BaseException | str] = []

    def check() -> None:
        checks.append(time.perf_counter())
        if cancel.is_set():
            raise Stop

    def work() -> None:
        try:
            with torch.no_grad(), interruptible(check):
                call()
            outcome.append("finished")
        except BaseException as error:  # noqa: BLE001 - handed to the test thread
            outcome.append(error)

    started = time.perf_counter()
    thread = threading.Thread(target=work)
    thread.start()
    time.sleep(after)
    cancel.set()
    interrupted_at = time.perf_counter()
    thread.join(60)
    ended = time.perf_counter()
    assert not thread.is_alive()
    assert isinstance(outcome[0], Stop), f"the call was not interrupted: {outcome[0]!r}"
    return ended - interrupted_at, len(checks), interrupted_at - started


def test_one_unet_call_at_a_large_size_stops_within_a_second():
    torch.set_num_threads(2)
    unet = tiny_unet("sd1")  # attention at full latent resolution: 65536 tokens at 256x256
    x, t = torch.randn(1, 4, 256, 256), torch.tensor([500.0])
    context = torch.randn(1, 77, TINY_CONTEXT_DIM)
    latency, checks, elapsed = run_and_interrupt(lambda: unet(x, t, context), after=1.0)
    assert latency < 2.0, f"the interrupt took {latency:.2f} s to land"
    # The call was far from done: its first self-attention alone is 65536 / 64 = 1024 query
    # chunks (one interrupt point each), so the whole call takes well over 5 s here, and
    # before the chunked attention it was one uninterruptible kernel call of minutes.
    assert checks < 1024
    assert elapsed * 1024 / max(checks, 1) > 5.0


def test_vae_decode_stops_within_a_second():
    torch.set_num_threads(2)
    vae = tiny_vae()
    z = torch.randn(4, 4, 192, 192)  # 1536x1536 pixels, batch 4: several seconds untiled
    latency, checks, _ = run_and_interrupt(lambda: vae.decode(z), after=0.5)
    assert latency < 2.0 and checks >= 1


def test_no_check_installed_costs_nothing_and_changes_nothing():
    unet = tiny_unet("sd1")
    x, t = torch.randn(1, 4, 8, 8), torch.tensor([500.0])
    context = torch.randn(1, 77, TINY_CONTEXT_DIM)
    with torch.no_grad():
        plain = unet(x, t, context)
        seen: list[int] = []
        with interruptible(lambda: seen.append(1)):
            checked = unet(x, t, context)
    check_interrupt()  # outside any scope: a no-op
    assert torch.equal(plain, checked)
    assert len(seen) >= len(unet.input_blocks) + len(unet.output_blocks)


def test_sample_turns_a_mid_call_cancel_into_sampling_cancelled():
    """``sample(cancel=...)`` installs its cancel check for the network's interrupt points."""
    calls = []

    class Model:
        model_sampling = None

        def __call__(self, x, sigma):
            calls.append(1)
            flag[0] = True  # the cancel becomes true during the first model call
            check_interrupt()
            return x

    flag = [False]
    model = Model()
    model.model_sampling = model_sampling_for("eps")
    with pytest.raises(SamplingCancelled, match="inside a model evaluation"):
        sample(model, "euler", torch.tensor([1.0, 0.5, 0.0]), torch.zeros(1, 4, 8, 8), 0,
               cancel=lambda: flag[0])
    assert calls == [1]


def test_checks_are_traced_away_under_torch_compile():
    """No graph break per block for sgm.nets.compile (a compiled forward stops between calls)."""
    import torch._dynamo as dynamo

    def forward(x):
        x = x + 1
        check_interrupt()
        return x * 2

    assert dynamo.explain(forward)(torch.ones(3)).graph_break_count == 0
