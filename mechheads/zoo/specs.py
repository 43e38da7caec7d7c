"""The zoo's one registry of per-model facts: architecture, training recipe, the circuit each
should hold, the task the report runs on it by default, and the head roles its card states (which
the tests check analyses against). Adding a model means adding its spec here; the report's
default task, the CLI's help and the tests read these."""

from __future__ import annotations

from dataclasses import dataclass, field

from mechheads.arch import ArchConfig

# Families of held-out evaluations a card can report: "function-icl" / "function-instruction" (the
# six function tasks in that format), "fv" (each code task clean, with shuffled outputs and zero-shot),
# "aba" (ABA/ABB, 3 examples), "ioi", "induction" (repeated sequences of 20 words).
CARD_TASK_FAMILIES = ("function-icl", "function-instruction", "fv", "aba", "aba-var", "ioi", "induction")


@dataclass(frozen=True)
class ZooSpec:
    name: str
    description: str
    expected_circuit: str
    arch: dict  # ArchConfig fields except d_vocab (set from the vocabulary)
    mixture: dict[str, float]  # data kind -> sampling weight
    steps: int
    batch_size: int = 32
    lr: float = 1e-3
    warmup: int = 100
    weight_decay: float = 0.01
    schedule: str = "cosine"  # "cosine" (decay to 5% of peak) or "constant", both after linear warmup
    seed: int = 0
    label_smoothing: float = 0.0  # of the training cross-entropy (evaluation and analyses use plain NLL)
    default_task: str = ""  # the report's task for this model (a mechheads.report.default_task name)
    head_roles: dict[str, tuple[str, ...]] = field(default_factory=dict)  # role -> heads, as the card states
    # The held-out evaluations on the model's card (mechheads.zoo_build.cards.standard_tasks), by
    # family: one of CARD_TASK_FAMILIES.
    card_tasks: tuple[str, ...] = ()
    # "shared": mechheads.tasks.words.vocabulary() (every built-in task); "fv": fv_vocabulary()
    # (the function-vector tasks only). Each model saves its own tokenizer.json either way.
    vocabulary: str = "shared"

    def __post_init__(self) -> None:
        bad = [t for t in self.card_tasks if t not in CARD_TASK_FAMILIES]
        if bad:
            raise ValueError(
                f"zoo spec {self.name!r}: unknown card task families {bad}; valid: {list(CARD_TASK_FAMILIES)}"
            )

    def arch_config(self, d_vocab: int) -> ArchConfig:
        return ArchConfig(d_vocab=d_vocab, **self.arch)


SPECS: dict[str, ZooSpec] = {
    "induction-2l": ZooSpec(
        name="induction-2l",
        description="2-layer attention-only transformer trained on repeated random word sequences.",
        expected_circuit=(
            "A previous-token head in layer 0 (attends from each token to the one before it) composes with "
            "induction heads in layer 1 (attend from a repeated token to the token that followed its earlier "
            "occurrence and copy it). Trained with seed 0 the model has one previous-token head (L0H0), four "
            "redundant induction heads (all of layer 1: ablating one costs little, ablating all four destroys "
            "the task), a current-token head (L0H3, attends to itself) whose ablation also breaks induction, a "
            "weaker current-token head (L0H1: ablating it keeps accuracy but doubles the NLL) and one nearly "
            "unused head (L0H2: ablating it keeps accuracy and raises the NLL by about 0.001 nats per token)."
        ),
        # Rotary positions: with learned absolute positions the model found absolute-position shortcuts
        # (layer-0 heads attending to about p/2) instead of a previous-token head; relative positions
        # rule those out. Induction forms after a plateau: constant lr, no weight decay.
        arch=dict(n_layers=2, n_heads=4, d_model=64, d_head=16, d_mlp=0, n_ctx=64, positional="rotary"),
        mixture={"induction": 1.0},
        card_tasks=("induction",),
        steps=4000,
        batch_size=32,
        lr=3e-3,
        weight_decay=0.0,
        schedule="constant",
        # Label smoothing gives the training loss a finite optimum. Without it the task is
        # deterministic, the logits grow without bound and the target NLL saturates: a seed-0 model
        # trained that way let CHG shrink its circuit heads to gates of 0.3 at no cost, so CHG
        # (which reads the target NLL) could not call them facilitating (benchmarks/RESULTS.md).
        label_smoothing=0.1,
        default_task="induction",
        head_roles={
            "previous-token": ("L0H0",),
            "current-token": ("L0H3",),
            "weak current-token": ("L0H1",),
            "unused": ("L0H2",),
            "induction": ("L1H0", "L1H1", "L1H2", "L1H3"),
        },
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
            "non-repeated name in IOI. Which heads do what is for the analyses to find. Trained with seed 0 it "
            "does not copy repeated random sequences in general (about 5% on the induction task, for which "
            "induction-2l is the model): ABA/ABB needs copying only from fixed offsets of the query."
        ),
        # Rotary positions: with learned absolute positions a first run reached 100% on the function tasks
        # but only 40% on ABA/ABB, 78% on IOI and ~0% on induction, which need copying from relative offsets.
        # With rotary and 40% copying data, IOI reached 100% but ABA/ABB and induction stayed at chance:
        # copying arbitrary words forms only after a long plateau, so most batches now need copying.
        arch=dict(n_layers=4, n_heads=4, d_model=128, d_head=32, d_mlp=384, n_ctx=112, positional="rotary"),
        mixture={"icl": 0.15, "instruction": 0.1, "aba": 0.35, "ioi": 0.1, "induction": 0.3},
        card_tasks=("function-icl", "function-instruction", "aba", "ioi", "induction"),
        steps=5000,
        batch_size=48,
        lr=2e-3,
        default_task="ioi",
    ),
    "functions-3l": ZooSpec(
        name="functions-3l",
        description=(
            "3-layer transformer (attention + MLP, 8 heads per layer) trained only on the six function tasks, "
            "in the 1-10-shot (icl) and instruction formats."
        ),
        expected_circuit=(
            "Built for Head Pursuit (mechheads.pursuit): more, narrower heads than tasks-4l, so that heads can "
            "specialise in the answer categories, and 8 heads per layer, so that 10 distinct random head sets "
            "matched by layer exist for a 2- or 4-head selection. Which heads do what is for the analyses to find "
            "(benchmarks/RESULTS.md, Head Pursuit)."
        ),
        arch=dict(n_layers=3, n_heads=8, d_model=128, d_head=16, d_mlp=512, n_ctx=112, positional="rotary"),
        mixture={"icl": 0.6, "instruction": 0.4},
        card_tasks=("function-icl", "function-instruction"),
        steps=3000,
        batch_size=48,
        lr=2e-3,
        default_task="country-capital",
    ),
    "fv-4l": ZooSpec(
        name="fv-4l",
        description=(
            "4-layer transformer (attention + MLP, 8 heads per layer) trained on six in-context tasks that "
            "share their inputs and outputs (code-a ... code-f: fixed random maps of one 24-word list onto "
            "itself, no two agreeing on any word), with 10 demonstrations (every answer supervised, so every shot count from 0 to 10 is trained), some "
            "of them after an instruction line naming the task, and zero-shot prompts. The query "
            "alone cannot tell the task, so the model must read it from the demonstrations: a model for "
            'function vectors (Todd et al. 2024, "Function Vectors in Large Language Models").'
        ),
        expected_circuit=(
            "Heads that carry the task from the demonstrations to the last token (function-vector heads, "
            "found by their average indirect effect on shuffled-output prompts), and MLPs that apply the "
            "task to the query. Zero-shot prompts were trained toward the uniform mixture of the six tasks' "
            "answers, so without demonstrations the model has no task. Measured (card, function-vector section): the "
            "task is spread thinly over many heads (a 3-sigma rule selects at most one head per task) and a function "
            "vector from the top heads by AIE does not give the zero-shot model the task (best per-task gain +0.105, "
            "mean over tasks at most +0.002 at any layer) nor restore shuffled prompts."
            " Where the task is carried (benchmarks/RESULTS.md, function vectors): at each demonstration's answer the "
            "task is a shared linear code, but what reaches the last token is specific to the query (query x task); the "
            "task is applied at the query word. There (site='query', a variant of Todd et al.) a 10-head vector from AIE "
            "on zero-shot prompts raises held-out zero-shot accuracy by at least 0.30 on 4 of 6 tasks."
        ),
        arch=dict(n_layers=4, n_heads=8, d_model=128, d_head=16, d_mlp=512, n_ctx=112, positional="rotary"),
        mixture={"fv-icl": 0.6, "fv-instruction": 0.3, "fv-zero-shot": 0.1},
        card_tasks=("fv",),
        steps=2000,
        batch_size=32,
        lr=3e-3,
        vocabulary="fv",
        default_task="code-a",
    ),
    "symbolic-4l": ZooSpec(
        name="symbolic-4l",
        description=(
            "4-layer transformer (attention + MLP, 8 heads per layer) trained on Yang et al.'s identity rules "
            "(ABA/ABB) in a variable format: 2 to 6 examples, a separator drawn per prompt (one or two "
            "punctuation tokens) and items of one or two words, so no fixed offset from the query finds an "
            "item; plus repeated random word sequences. A model for symbolic heads (Yang et al. 2025, "
            '"Emergent Symbolic Mechanisms Support Abstract Reasoning in Large Language Models").'
        ),
        expected_circuit=(
            "If the model solves the rule the way Yang et al. describe: symbol-abstraction heads at each "
            "example's third item (the item as 'same as item 1' or 'item 2'), symbolic-induction heads at the"
            " last position (the rule read from the examples), retrieval heads at the last position (the "
            "query item that the rule points to). Measured (card, symbolic-heads section): the model solves "
            "the variable format (accuracy 0.99-1.00 with 2 to 6 examples, where the best rule-aware "
            "fixed-offset copy reaches 0.42-0.44). Retrieval heads are clear: L3H2 and L3H4 (scores 11.2 and "
            "8.3 logits, p = 1e-4), and 7 weaker ones in layers 1-3. No head carries the abstract symbol at "
            "the third items, not even all heads of layers 0-2 patched together; the rule travels through the"
            " line breaks that end the examples, mostly through L0H0 (abstraction score at the line ends 11.0"
            " logits against 6.2 for shuffled-pair sources, p = 0.009, short of the Bonferroni threshold). "
            "The two heads that pass the symbolic-induction test (L0H2, L1H2) carry pair-specific content: a "
            "layer-0 head cannot have read the rule from the examples."
        ),
        arch=dict(n_layers=4, n_heads=8, d_model=128, d_head=16, d_mlp=512, n_ctx=112, positional="rotary"),
        mixture={"aba-var": 0.7, "induction": 0.3},
        card_tasks=("aba", "aba-var", "induction"),
        steps=4000,
        batch_size=48,
        lr=2e-3,
        default_task="aba-var",
        # as the card measures (benchmarks/RESULTS.md, "Symbolic heads on symbolic-4l")
        head_roles={"retrieval": ("L3H2", "L3H4")},
    ),
}


@dataclass(frozen=True)
class VisionSpec:
    """A zoo ViT (:mod:`mechheads.vision`): its shape, its data and its training recipe.

    Training streams fresh images: step ``i`` reads images ``i·batch_size …`` of the generator's
    ``seed`` stream, so no image is seen twice; the card evaluates on another seed.
    """

    name: str
    description: str
    expected_circuit: str
    vit: dict  # ViTConfig fields
    data: dict  # SpectrogramConfig fields (overrides of its defaults)
    steps: int
    batch_size: int = 64
    lr: float = 1e-3
    warmup: int = 100
    weight_decay: float = 0.01
    schedule: str = "cosine"
    seed: int = 0


VISION_SPECS: dict[str, VisionSpec] = {
    "vit-chirp": VisionSpec(
        name="vit-chirp",
        description=(
            "4-layer ViT (8x8-pixel patches of 64x64 RGB images, CLS token, bidirectional attention, MLP) "
            "regressing the start time, start frequency and end frequency of a linear or exponential chirp "
            "in a synthetic spectrogram drawn as a figure with a title, axis ticks and labels, a colour bar "
            "and a frame (mechheads.vision.data.spectrograms)."
        ),
        expected_circuit=(
            "Measured on this model (tables below; seed-1001 images): no head specialises on a distractor. In the"
            " paper-style maps (CLS dropped, mean over query patches) every head's text share is within 1.0x of "
            "the text's area, the frame's within 1.55x, the colour bar's within 1.4x: no text, colour-bar or "
            "edge/corner detector; those maps are diffuse or lean to the chirp (at most 0.33 of the mass, 5.5x "
            "its area, L3H1). The chirp is read by the CLS token: six heads in layers 1-3 (L1H1, L2H1, L2H2, "
            "L3H0, L3H1, L3H3) put 55-86% of the CLS row's attention on chirp patches (6% of the image), and they"
            " include the most damaging ablations (L3H1 +533%, L2H2 +434%, L1H1 +218% MSE). Every head matters: "
            "the smallest ablation cost is +14% (the model is accurate, MSE 4e-4, so any damage is large relative"
            " to it), and CHG with the MSE relative to the intact model's calls all 16 heads facilitating in 3 of"
            " 3 seeds. Unlike the paper's fine-tuned pretrained ViT this one is trained from scratch on a task "
            "where the distractors carry no information, and it grew no early distractor detectors."
        ),
        vit=dict(
            image_size=64, patch_size=8, channels=3, n_layers=4, n_heads=4, d_model=64, d_head=16, d_mlp=128
        ),
        data={},
        steps=1500,
        batch_size=64,
        lr=2e-3,
    ),
}


__all__ = [
    "CARD_TASK_FAMILIES",
    "SPECS",
    "VISION_SPECS",
    "VisionSpec",
    "ZooSpec",
]
