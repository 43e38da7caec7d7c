"""One positions vocabulary (mechheads.tasks.positions), shared by patching, pursuit and rollout."""

import pytest
import torch

from mechheads import MechheadsError
from mechheads.patching import resolve_positions
from mechheads.tasks import TokenBatch
from mechheads.tasks.positions import POSITION_ROLES, check_role, role_mask, role_positions


def _batch():
    # two prompts of 5 and 3 tokens plus a 2-token target each, right-padded to 7
    tokens = torch.tensor([[1, 2, 3, 4, 5, 6, 7], [1, 2, 3, 8, 9, 0, 0]])
    lengths = torch.tensor([7, 5])
    prompt = torch.tensor([5, 3])
    T = tokens.shape[1]
    ar = torch.arange(T)[None]
    target = (ar >= prompt[:, None] - 1) & (ar < lengths[:, None] - 1)
    return TokenBatch(
        tokens=tokens,
        labels=tokens,
        target_mask=target,
        answer_pos=prompt - 1,
        first_target=tokens[torch.arange(2), prompt],
        prompt_lengths=prompt,
        lengths=lengths,
    )


def test_roles_select_what_their_names_say():
    b = _batch()
    assert role_positions(b, "all") == [list(range(7)), list(range(5))]
    assert role_positions(b, "prompt") == [list(range(5)), list(range(3))]
    assert role_positions(b, "last") == [[4], [2]]
    assert role_positions(b, "first") == [[0], [0]]
    assert role_positions(b, "targets") == [[4, 5], [2, 3]]
    for synonym, role in (("valid", "all"), ("answer", "last")):
        assert torch.equal(role_mask(b, synonym), role_mask(b, role))
    assert set(POSITION_ROLES) == {"all", "prompt", "last", "first", "targets"}


def test_patching_resolves_the_same_roles():
    b = _batch()
    for role in POSITION_ROLES:
        assert resolve_positions(b, role) == role_positions(b, role)


def test_an_unknown_or_disallowed_role_names_the_valid_ones():
    with pytest.raises(
        MechheadsError,
        match=r"unknown position role 'middle'.*\['all', 'prompt', 'last', 'first', 'targets'\]",
    ):
        check_role("middle")
    with pytest.raises(
        MechheadsError, match=r"read must be one of \['targets', 'last'\] \(synonyms: 'answer' = 'last'\)"
    ):
        check_role("prompt", ("targets", "last"), what="read")
