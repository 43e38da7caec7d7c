"""The roles of the zoo model induction-2l's heads, as its card states them (seed 0), read from the
zoo's registry (``mechheads.zoo.specs.SPECS["induction-2l"].head_roles``): one place for the tests
that check analyses against the known circuit."""

from mechheads.zoo.specs import SPECS

_ROLES = SPECS["induction-2l"].head_roles
(PREV,) = _ROLES["previous-token"]  # ablating it breaks induction
(CURRENT,) = _ROLES["current-token"]  # ablating it breaks induction too
(WEAK_CURRENT,) = _ROLES["weak current-token"]  # ablating it keeps accuracy, doubles the NLL
(UNUSED,) = _ROLES["unused"]  # nearly unused: ablating it keeps accuracy, NLL +0.001 nats per token
INDUCTION = list(_ROLES["induction"])  # redundant induction heads


def lh(name: str) -> tuple[int, int]:
    """``"L0H2"`` → ``(0, 2)``."""
    layer, head = name[1:].split("H")
    return int(layer), int(head)
