"""Building the zoo: training its models (:mod:`mechheads.zoo_build.train`) and evaluating them
and writing their model cards (:mod:`mechheads.zoo_build.cards`).

This sits above the methods, beside :mod:`mechheads.report`: a card runs the attention-head
detectors and, for a ViT, the vision analyses. :mod:`mechheads.zoo` itself only loads the shipped
models. The commands ``python -m mechheads.zoo.train NAME`` and ``python -m mechheads.zoo.cards
NAME`` (recorded in the shipped cards) and ``mechheads zoo train NAME`` run the code here.
"""

__all__: list[str] = []
