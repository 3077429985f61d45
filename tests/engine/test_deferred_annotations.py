"""Node annotations under ``from __future__ import annotations`` (all strings until evaluated)."""

from __future__ import annotations

import pytest

from engine.api import Int, NodeDefinitionError, Out, node


def make_pack(limit: int):
    # `Steps` is a local used only in an annotation: not a global, and (the annotation being a
    # string) not a closure variable either; the decorator resolves it in this scope.
    Steps = Int(min=1, max=limit)  # noqa: N806

    @node("Deferred.Count")
    def count(steps: Steps = 3) -> Out(total="INT"):
        return (steps,)

    return count


def test_a_local_used_only_in_an_annotation_is_resolved() -> None:
    spec = make_pack(7)
    (steps,) = spec.inputs
    assert (steps.name, steps.widget.max, steps.default) == ("steps", 7, 3)


def test_an_unknown_name_in_an_annotation_is_still_reported() -> None:
    with pytest.raises(NodeDefinitionError, match="cannot evaluate annotation 'Missing'"):
        @node("Deferred.Bad")
        def bad(value: Missing = 1) -> Out(total="INT"):  # noqa: F821
            return (value,)
