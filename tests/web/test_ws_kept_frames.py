"""A slow client loses superseded live previews, never the images a node sends on purpose."""

from __future__ import annotations

from web.events import preview_frame
from web.ws import MAX_PENDING_PREVIEWS, Connection, KeptFrame, Outgoing, WebSocketHub


def test_a_slow_client_skips_previews_beyond_the_cap_but_keeps_every_sent_image() -> None:
    hub = WebSocketHub(status=lambda: {})
    connection = Connection("slow", socket=None)  # type: ignore[arg-type]  # nothing is sent: nobody drains
    hub._connections["slow"] = {connection}
    png = b"\x89PNG\r\n\x1a\n" + b"x" * 10
    sent = preview_frame(png)  # what SaveImageWebsocket's bytes become
    assert isinstance(sent, KeptFrame) and sent[:8] == b"\x00\x00\x00\x01\x00\x00\x00\x02"
    live = preview_frame(type("Image", (), {"save": lambda self, buffer, **kw: buffer.write(b"jpeg")})())
    assert live is not None and not isinstance(live, KeptFrame)
    for _ in range(3 * MAX_PENDING_PREVIEWS):
        hub.deliver(Outgoing(live, "slow"))
        hub.deliver(Outgoing(sent, "slow"))
    queued = [connection.outbox.get_nowait() for _ in range(connection.outbox.qsize())]
    assert sum(isinstance(f, KeptFrame) for f in queued) == 3 * MAX_PENDING_PREVIEWS
    assert sum(not isinstance(f, KeptFrame) for f in queued) == MAX_PENDING_PREVIEWS
    assert connection.previews_pending == MAX_PENDING_PREVIEWS  # kept frames do not use up the preview cap
