"""An example plugin: drop a file like this into custom_nodes/ and restart.

Node ids are namespaced by the file name, so these appear as ``example_text.Reverse``.
"""

from engine.api import Int, Out, Text, node


@node("Reverse", category="example")
def reverse(text: Text() = "") -> Out(text="STRING"):
    """Reverse a piece of text."""
    return text[::-1]


@node("Repeat", category="example")
def repeat(text: Text() = "", times: Int(min=1, max=100) = 2) -> Out(text="STRING"):
    """Repeat a piece of text several times, separated by spaces."""
    return " ".join([text] * times)


NODES = [reverse, repeat]
