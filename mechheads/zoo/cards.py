"""``python -m mechheads.zoo.cards NAME``: re-evaluate a shipped zoo model and rewrite its card.

A command-line entry point only; the code is :mod:`mechheads.zoo_build.cards` (a card runs the
analyses, so writing one sits above them, not in the zoo package). Nothing imports this module.
"""

__all__: list[str] = []

if __name__ == "__main__":
    from mechheads.zoo_build.cards import main

    raise SystemExit(main())
