"""Command modules of ``main.py`` that live in the model library (convert, train, eval).

Each defines ``configure(parser)`` and ``run(args) -> int`` and imports torch only inside ``run``.
"""
