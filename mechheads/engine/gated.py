"""Logits under per-row head gates, for methods that learn gates by gradient (Causal Head Gating).

:class:`GatedForward` multiplies every head's ``z`` by its gate, one gate matrix per row of the
batch. Where the fused tail covers the model (and no other hook is attached) the gated forward
runs through it from the embedding output, in fused kernels and without the backend's hook
machinery — on a ``TransformerBridge`` that machinery is most of a small model's forward time;
elsewhere it attaches :func:`mechheads.hooks.gate_heads` and runs the backend's own forward.
Both are differentiable in the gates and agree to float32 rounding (``tests/test_engine.py``).
"""

from __future__ import annotations

import torch
from jaxtyping import Float

from mechheads.engine.fused import FusedTail, fused_tail
from mechheads.errors import MechheadsError
from mechheads.hooks import gate_heads
from mechheads.model import HeadModel, hook_resid_pre


class GatedForward:
    """``forward(tokens, gates, positions)`` -> logits with head ``(l, h)``'s ``z`` of row ``n``
    multiplied by ``gates[n, l, h]``.

    Args:
        model: the model (its weights are read when this object is made: make a new one after
            changing them).
        fused: allow the fused tail; it is used only if the model has no other hook attached now.
    """

    def __init__(self, model: HeadModel, fused: bool = True):
        self.model = model
        self.tail: FusedTail | None = None
        if fused and model.n_attached_hooks() == 0:
            with torch.no_grad():
                self.tail = fused_tail(model)

    @property
    def path(self) -> str:
        """``"fused"`` or ``"hooks"``: how the gated forward runs."""
        return "fused" if self.tail is not None else "hooks"

    def __call__(
        self,
        tokens: torch.Tensor,
        gates: Float[torch.Tensor, "row layer head"],
        positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits [row, pos, vocab] (``positions``: only at those sorted positions)."""
        m = self.model
        L, H = m.cfg.n_layers, m.cfg.n_heads
        if gates.ndim != 3 or tuple(gates.shape) != (tokens.shape[0], L, H):
            raise MechheadsError(
                f"gates must be [rows={tokens.shape[0]}, {L}, {H}], got {tuple(gates.shape)}"
            )
        if self.tail is None or m.n_attached_hooks() != 0:
            with gate_heads(m, gates):
                return m.forward_from(tokens, 0, None, positions)
        with torch.no_grad():
            resid = m.activation(tokens, hook_resid_pre(0))

        def edit(layer: int, z: torch.Tensor, pos) -> torch.Tensor:
            return z * gates[:, layer].to(z.device, z.dtype)[:, None, :, None]

        return self.tail.run(resid, 0, edit, None, None if positions is None else positions.to(resid.device))


__all__ = ["GatedForward"]
