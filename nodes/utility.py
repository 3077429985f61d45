"""Small utility nodes that need no model: primitives, arithmetic, text, notes."""

from __future__ import annotations

from engine.api import ANY, Choice, Float, Int, Out, Result, Text, node


@node("PrimitiveInt", display_name="Integer", category="utility/primitives")
def primitive_int(value: Int(min=-(2**63), max=2**63 - 1) = 0) -> Out(value="INT"):
    """An integer constant to link into several nodes."""
    return value


@node("PrimitiveFloat", display_name="Float", category="utility/primitives")
def primitive_float(value: Float(step=0.01) = 0.0) -> Out(value="FLOAT"):
    """A number constant to link into several nodes."""
    return float(value)


@node("PrimitiveString", display_name="String", category="utility/primitives")
def primitive_string(value: Text(multiline=True) = "") -> Out(value="STRING"):
    """A text constant (for example a prompt shared by several nodes)."""
    return value


@node("MathExpression", display_name="Math (a op b)", category="utility/math")
def math_op(a: Float() = 0.0, b: Float() = 0.0,
            op: Choice(choices=("+", "-", "*", "/", "min", "max")) = "+") -> Out(float="FLOAT", int="INT"):
    """Combine two numbers with + - * / min max; outputs the result as FLOAT and rounded INT."""
    ops = {"+": a + b, "-": a - b, "*": a * b, "min": min(a, b), "max": max(a, b)}
    if op == "/":
        if b == 0:
            raise ZeroDivisionError("b is 0: division by zero; give b a non-zero value")
        ops["/"] = a / b
    if op not in ops:
        raise ValueError(f"unknown op {op!r}; use one of + - * / min max")
    return float(ops[op]), int(round(ops[op]))


@node("ShowValue", display_name="Show Value", category="utility", output=True)
def show_value(value: ANY) -> None:
    """Display any value in the UI (text for numbers and strings, a summary otherwise)."""
    shape = getattr(value, "shape", None)
    text = f"{type(value).__name__}{tuple(shape)}" if shape is not None else repr(value)
    return Result(ui={"text": [text]})


NODES = [primitive_int, primitive_float, primitive_string, math_op, show_value]
