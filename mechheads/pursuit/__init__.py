"""Head Pursuit: label attention heads with Simultaneous Orthogonal Matching Pursuit, steer by rescaling.

After Basile et al. (2025), "Head Pursuit: Probing Attention Specialization in Multimodal
Transformers" (surveyed by Kadem & Zheng 2026, "Interpreting Transformers Through Attention Head
Intervention", §13). For each head, the matrix ``X ∈ R^{n×d_model}`` holds its write into the
residual stream (``z @ W_O[l, h]``), one row per prompt (positions averaged) or per token, centred
over rows. SOMP explains all rows at once with a few atoms of a dictionary of L2-normalised
directions — by default the unembedding columns, one per token:

1. ``R = X``, support ``S = []``;
2. ``k`` times: pick the atom ``j`` maximising ``‖D_j Rᵀ‖₁`` (not yet in ``S``), add it to ``S``,
   refit ``W = argmin ‖X − W D_S‖`` by least squares, ``R = X − W D_S``.

The explained-variance ratio ``1 − ‖R‖² / ‖X‖²`` after each step says how much of the head's
(centred) output the selected tokens account for; a head is labelled by the tokens its support
selects. Restricting the dictionary to a concept's tokens gives a head–concept score (the
explained-variance ratio of that fit), and heads are ranked per concept.

Steering rescales a concept's top heads by ``α`` (``α = −1`` flips and suppresses, ``0`` zeroes,
``α > 1`` amplifies) while scoring a task or generating, and compares the effect with random head
sets matched in count and layer distribution, disjoint from the selected heads (median and IQR).

The head writes ignore the final LayerNorm (as in the paper: raw outputs against raw unembedding
directions). :func:`somp` runs all heads at once (batched least squares); :func:`somp_naive` is the
per-head textbook loop it is tested against.

Example:
    >>> from mechheads import zoo
    >>> from mechheads.pursuit import WORD_CONCEPTS, concept_scores, head_pursuit
    >>> from mechheads.tasks import function_task
    >>> model = zoo.load("tasks-4l")
    >>> data = function_task("country-capital", n=40)
    >>> res = head_pursuit(model, data, k=5, progress=False)
    >>> res.labels().head()                                      # doctest: +SKIP
    >>> cs = concept_scores(model, data, WORD_CONCEPTS, progress=False)
    >>> cs.top_heads("capital cities", 2)                        # doctest: +SKIP

Modules: :mod:`~mechheads.pursuit.writes` (head outputs), :mod:`~mechheads.pursuit.dictionaries`,
:mod:`~mechheads.pursuit.somp` (the algorithm and its naive reference), :mod:`~mechheads.pursuit.labels`
(labels and concept scores) and :mod:`~mechheads.pursuit.steering`.
"""

from mechheads.pursuit.dictionaries import (
    WORD_CONCEPTS,
    Dictionary,
    concept_dictionary,
    concept_token_ids,
    unembedding_dictionary,
)
from mechheads.pursuit.labels import ConceptScores, PursuitResult, concept_scores, head_pursuit
from mechheads.pursuit.somp import SompFit, somp, somp_naive
from mechheads.pursuit.steering import (
    SteeringResult,
    concept_mass,
    generate,
    matched_random_heads,
    score_heads,
    selectivity_table,
    steering_effect,
)
from mechheads.pursuit.writes import head_writes

__all__ = [
    "WORD_CONCEPTS",
    "ConceptScores",
    "Dictionary",
    "PursuitResult",
    "SompFit",
    "SteeringResult",
    "concept_dictionary",
    "concept_mass",
    "concept_scores",
    "concept_token_ids",
    "generate",
    "head_pursuit",
    "head_writes",
    "matched_random_heads",
    "score_heads",
    "selectivity_table",
    "somp",
    "somp_naive",
    "steering_effect",
    "unembedding_dictionary",
]
