"""ComfyUI's messages for dynamic execution: a node added by graph expansion is shown as the
workflow node it came from, and an ExecutionBlocker with a message arrives as ComfyUI's
``execution_error`` (type ExecutionBlocked) without failing the prompt."""

from __future__ import annotations

from engine.scheduler import Event
from web.events import _RunState, _translate


def test_expanded_nodes_are_displayed_as_their_workflow_node() -> None:
    state = _RunState()
    data = {"display_node": "7", "parent_node": "7.0.0.1"}
    (executing,) = _translate("p", state, Event("node_started", "r", "7.0.0.2", "Count", data=data))
    assert executing["data"] == {"node": "7.0.0.2", "display_node": "7", "prompt_id": "p"}
    (executed,) = _translate("p", state, Event("node_finished", "r", "7.0.0.2", "Show",
                                               data={**data, "ui": {"text": ["x"]}}))
    assert executed["data"]["display_node"] == "7" and executed["data"]["node"] == "7.0.0.2"
    (plain,) = _translate("p", state, Event("node_started", "r", "3", "Count"))
    assert plain["data"]["display_node"] == "3"


def test_a_blocker_with_a_message_is_an_execution_error_that_does_not_fail_the_prompt() -> None:
    state = _RunState()
    _translate("p", state, Event("node_finished", "r", "1", "Count", data={}))
    (error,) = _translate("p", state, Event("node_blocked", "r", "3", "Total",
                                            data={"message": "Execution blocked: no input"}))
    assert error["type"] == "execution_error"
    assert error["data"]["exception_type"] == "ExecutionBlocked" and error["data"]["node_id"] == "3"
    assert error["data"]["exception_message"] == "Execution blocked: no input"
    assert error["data"]["executed"] == ["1"] and not state.failed
    (success,) = _translate("p", state, Event("run_finished", "r"))
    assert success["type"] == "execution_success"
