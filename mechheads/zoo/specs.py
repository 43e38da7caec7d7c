"""Specifications of the zoo models: architecture, training recipe, and the circuit each should hold."""

from __future__ import annotations

from dataclasses import dataclass, field

from mechheads.arch import ArchConfig


@dataclass(frozen=True)
class ZooSpec:
    name: str
    description: str
    expected_circuit: str
    arch: dict  # ArchConfig fields except d_vocab (set from the shared vocabulary)
    mixture: dict[str, float]  # data kind -> sampling weight
    steps: int
    batch_size: int = 32
    lr: float = 1e-3
    warmup: int = 100
    weight_decay: float = 0.01
    schedule: str = "cosine"  # "cosine" (decay to 5% of peak) or "constant", both after linear warmup
    seed: int = 0
    eval_n: int = 200
    extra: dict = field(default_factory=dict)

    def arch_config(self, d_vocab: int) -> ArchConfig:
        return ArchConfig(d_vocab=d_vocab, **self.arch)


SPECS: dict[str, ZooSpec] = {
    "induction-2l": ZooSpec(
        name="induction-2l",
        description="2-layer attention-only transformer trained on repeated random word sequences.",
        expected_circuit=(
            "A previous-token head in layer 0 (attends from each token to the one before it) composes with an "
            "induction head in layer 1 (attends from a repeated token to the token that followed its earlier "
            "occurrence and copies it). Ablating either one should destroy repeated-sequence prediction."
        ),
        arch=dict(n_layers=2, n_heads=4, d_model=64, d_head=16, d_mlp=0, n_ctx=64),
        mixture={"induction": 1.0},
        # Induction forms after a plateau (~2,000 steps here): constant lr, no weight decay.
        steps=4000,
        batch_size=32,
        lr=3e-3,
        weight_decay=0.0,
        schedule="constant",
    ),
    "tasks-4l": ZooSpec(
        name="tasks-4l",
        description=(
            "4-layer transformer (attention + MLP) trained on a mixture of the built-in tasks: the six function "
            "tasks in the 10-shot and instruction formats, ABA/ABB identity rules, IOI-style name moving, and "
            "repeated sequences."
        ),
        expected_circuit=(
            "Heads that read the task from the demonstrations (function-vector heads) or from the instruction, "
            "induction/copying heads for ABA/ABB and repeated sequences, and name-mover-like heads that copy the "
            "non-repeated name in IOI. Which heads do what is for the analyses to find."
        ),
        arch=dict(n_layers=4, n_heads=4, d_model=128, d_head=32, d_mlp=384, n_ctx=112),
        mixture={"icl": 0.4, "instruction": 0.22, "aba": 0.18, "ioi": 0.1, "induction": 0.1},
        steps=4000,
        batch_size=48,
        lr=1.5e-3,
    ),
}
