"""Auto Queue from the toolbar: "instant" keeps queueing while the queue empties, "on change"
queues once per edit (the seeds queueing advances do not count as edits), "off" stops."""

from __future__ import annotations

import json
import time
import urllib.request

from tests.browser.editor import open_editor


def history_size(server) -> int:
    with urllib.request.urlopen(f"{server.url}/api/history") as response:
        return len(json.load(response))


def wait_history(server, at_least: int, timeout: float = 30.0) -> int:
    deadline = time.monotonic() + timeout
    while (size := history_size(server)) < at_least:
        assert time.monotonic() < deadline, f"history has {size} entries, expected at least {at_least}"
        time.sleep(0.1)
    return size


def test_instant_keeps_queueing_and_off_stops(page, server):
    open_editor(page, server.url)
    page.select_option("#auto-queue", "instant")  # the queue is empty: it queues at once
    wait_history(server, 3)
    page.select_option("#auto-queue", "off")
    time.sleep(1.0)
    settled = history_size(server)
    time.sleep(1.5)
    assert history_size(server) == settled  # nothing more after "off" (what was queued ran)


def test_on_change_queues_once_per_edit(page, server):
    open_editor(page, server.url)
    page.select_option("#auto-queue", "change")
    time.sleep(1.0)
    assert history_size(server) == 0  # no edit yet
    page.fill('[data-node-id="2"] [data-widget="text"] textarea', "a blue square")
    page.locator('[data-node-id="2"] [data-widget="text"] textarea').blur()
    wait_history(server, 1)
    time.sleep(1.5)
    assert history_size(server) == 1  # the seed it advanced is not an edit: no loop
    page.fill('[data-node-id="2"] [data-widget="text"] textarea', "a green circle")
    page.locator('[data-node-id="2"] [data-widget="text"] textarea').blur()
    wait_history(server, 2)
    page.select_option("#auto-queue", "off")
