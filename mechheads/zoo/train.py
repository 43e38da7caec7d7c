"""``python -m mechheads.zoo.train NAME``: retrain a zoo model on the CPU and rewrite its card.

This is the command every shipped model's config and card record, kept as a command-line entry
point only. The code is :mod:`mechheads.zoo_build.train`: writing a card runs the analyses (the
attention-head detectors, the vision analyses), so training sits above them, not in the zoo
package, which only loads the models. Nothing imports this module.
"""

__all__: list[str] = []

if __name__ == "__main__":
    from mechheads.zoo_build.train import main

    raise SystemExit(main())
