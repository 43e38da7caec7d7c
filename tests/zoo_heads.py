"""The roles of the zoo model induction-2l's heads, as its card states them (seed 0): one place for
the tests that check analyses against the known circuit."""

PREV = "L0H0"  # previous-token head (ablating it breaks induction)
CURRENT = "L0H3"  # current-token head (ablating it breaks induction too)
WEAK_CURRENT = "L0H1"  # weaker current-token head (ablating it keeps accuracy, doubles the NLL)
UNUSED = "L0H2"  # nearly unused: ablating it keeps accuracy, NLL +0.001 nats per token
INDUCTION = ["L1H0", "L1H1", "L1H2", "L1H3"]  # redundant induction heads


def lh(name: str) -> tuple[int, int]:
    """``"L0H2"`` → ``(0, 2)``."""
    layer, head = name[1:].split("H")
    return int(layer), int(head)
