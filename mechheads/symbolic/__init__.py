"""Symbolic heads for identity rules (Yang et al. 2025, "Emergent Symbolic Mechanisms Support
Abstract Reasoning in Large Language Models").

Prompts: ``k`` examples ``a^b^a`` (rule ABA) or ``a^b^b`` (ABB), one per line, then the query
``c^d^``; the answer is ``c`` (ABA) or ``d`` (ABB). Three kinds of heads, each found by patching
one head's ``hook_z`` from a *base* prompt into an *experimental* one:

* **symbol-abstraction heads** — experimental prompt: items 1 and 2 swapped in every example and in
  the query (``b^a^a`` … ``d^c^``), which flips the rule; patched at the third-item positions of
  the examples. A head that carries the abstract symbol ("same as item 1") moves the answer to the
  *causal* one: the base rule applied to the experimental query;
* **symbolic-induction heads** — the same pair, patched at the last position;
* **retrieval heads** — experimental prompt: same examples, only the query swapped (``d^c^``);
  patched at the last position; the causal answer is the base prompt's actual answer token.

Score of a head on one pair: [logit(causal answer) − logit(experimental answer)] at the last
position, patched minus unpatched; averaged over pairs the model solves in *both* versions (the
``filtered`` table says how many were dropped and why).

Significance (:func:`symbolic_scores`): a one-sided two-sample permutation test per head. Null
hypothesis: the head's per-pair scores have the same distribution whether the patched activation
comes from the pair's own base prompt or from the base prompt of another, randomly chosen pair
(shuffled pairs: the head carries nothing pair-specific that moves the answer towards the causal
one). Statistic: mean own-pair score − mean shuffled-pair score; p = (1 + #{permuted statistic ≥
observed}) / (1 + n_permutations). A head is significant if p < alpha / (number of heads)
(Bonferroni over the heads of a kind; ``correction="none"`` drops the division) and its mean
score is positive. Shuffled sources keep half their rule information on rule-flip pairs (half of
the other pairs share the base rule), so the test is conservative for abstraction and induction heads.

Next to it, the threshold Yang et al.'s released analysis uses: a head passes if its mean score
exceeds the ``1 − null_quantile`` quantile (0.95 by default) of its scores under shuffled pairs
(columns null_threshold and significant_null_quantile). Here the null trials are the head's own
shuffled-pair scores (one per kept pair; the authors drew thousands of shuffled trials), and the
comparison is of a mean against single trials, with no correction over heads. It is not uniformly
looser or stricter than the permutation test: looser where a head's shuffled-pair scores vary
little, stricter where they vary a lot (the 0.95 quantile of single trials then lies far above
their mean, as for the strong retrieval heads of the zoo's symbolic-4l). Kept to make results
comparable with the paper.

``abstraction_at="line_end"`` patches the abstraction score at the line break that ends each
example instead of its third item: in a small model the comparison of the third item with items 1
and 2 can happen there (not the paper's position; the zoo's symbolic-4l card measures both).

Validation (:func:`cumulative_validation`): zero-ablate the heads cumulatively in score order and
compare P(correct) with ablating, in the same order, the lowest-scoring head of the same layer, and
random heads.

Example:
    >>> from mechheads import zoo
    >>> model = zoo.load("tasks-4l")
    >>> res = symbolic_scores(model, n=100, progress=False)        # doctest: +SKIP
    >>> res.scores.query("significant")                              # doctest: +SKIP
"""

from mechheads.symbolic.pairs import KINDS, Kind, SymbolicPairs, symbolic_pairs
from mechheads.symbolic.scores import (
    SymbolicResult,
    cma_significant_heads,
    permutation_test,
    significant_heads,
    symbolic_scores,
)
from mechheads.symbolic.validation import cumulative_validation

__all__ = [
    "KINDS",
    "Kind",
    "cma_significant_heads",
    "SymbolicPairs",
    "SymbolicResult",
    "cumulative_validation",
    "permutation_test",
    "significant_heads",
    "symbolic_pairs",
    "symbolic_scores",
]
