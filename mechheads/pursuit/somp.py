"""Simultaneous Orthogonal Matching Pursuit over every head at once, and its per-head reference."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from tqdm.auto import tqdm

from mechheads.errors import MechheadsError
from mechheads.pursuit.dictionaries import Dictionary


# ----- SOMP --------------------------------------------------------------------------------------
@dataclass
class SompFit:
    """SOMP of G signal matrices: support [G, k] (atom indices in selection order), least-squares
    weights [G, row, k] of the final fit, explained-variance ratio after each step [G, k]."""

    support: Int[torch.Tensor, "group k"]
    weights: Float[torch.Tensor, "group row k"]
    explained: Float[torch.Tensor, "group k"]


def check_somp(X: torch.Tensor, D: torch.Tensor | Dictionary, k: int) -> torch.Tensor:
    atoms = D.atoms if isinstance(D, Dictionary) else D
    if not isinstance(atoms, torch.Tensor) or atoms.ndim != 2:
        raise MechheadsError("the dictionary must be a Dictionary or a 2-D tensor [n_atoms, d_model]")
    if atoms.shape[0] == 0:
        raise MechheadsError("the dictionary is empty: give at least one atom")
    if not isinstance(X, torch.Tensor) or X.ndim != 3:
        raise MechheadsError(
            f"signals must be a tensor [group, row, d_model], got {getattr(X, 'shape', type(X).__name__)}"
        )
    if X.shape[-1] != atoms.shape[1]:
        raise MechheadsError(f"signals have d_model={X.shape[-1]} but the dictionary atoms {atoms.shape[1]}")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise MechheadsError(f"k must be a positive integer, got {k!r}")
    if k > atoms.shape[0]:
        raise MechheadsError(
            f"k={k} is larger than the dictionary ({atoms.shape[0]} atoms): valid k are 1..{atoms.shape[0]}"
        )
    if not torch.isfinite(X).all():
        raise MechheadsError("the signals hold non-finite values (nan or inf)")
    return atoms


def _explained(resid_sq: torch.Tensor, total: torch.Tensor) -> torch.Tensor:
    """1 − ‖R‖²/‖X‖², and 0 for an all-zero signal (nothing to explain)."""
    ok = total > 0
    return torch.where(
        ok, 1 - resid_sq / torch.where(ok, total, torch.ones_like(total)), torch.zeros_like(total)
    )


def _lstsq_rows(DS: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
    """Batched ``W = argmin ‖X − W D_S‖`` for DS [g, s, d], X [g, n, d] -> W [g, n, s].

    Householder QR of ``D_Sᵀ`` and a triangular solve (much faster on CPU than LAPACK's batched
    ``gelsy``); groups whose selected atoms are linearly dependent (which SOMP only reaches once
    the residual is numerically zero) fall back to the pseudo-inverse.
    """
    A = DS.transpose(1, 2)  # [g, d, s]
    Q, R = torch.linalg.qr(A)
    diag = R.diagonal(dim1=1, dim2=2).abs()
    full = diag.min(1).values > 1e-10 * diag.max(1).values.clamp(min=torch.finfo(R.dtype).tiny)
    Wt = torch.linalg.solve_triangular(R, Q.transpose(1, 2) @ X.transpose(1, 2), upper=True)
    if not bool(full.all()):
        bad = (~full).nonzero().flatten()
        Wt[bad] = torch.linalg.pinv(A[bad]) @ X[bad].transpose(1, 2)
    return Wt.transpose(1, 2)


def somp(
    X: Float[torch.Tensor, "group row d_model"],
    D: Float[torch.Tensor, "atom d_model"] | Dictionary,
    k: int,
    *,
    dtype: torch.dtype = torch.float64,
    max_elements: int = 2**26,
    progress: bool = False,
) -> SompFit:
    """Simultaneous OMP of every signal matrix in ``X`` at once (vectorised over the group).

    Atom scores come from the correlations ``C = R Dᵀ``, kept up to date without recomputing
    ``R Dᵀ`` from scratch: ``C = X Dᵀ − W (D_S Dᵀ)``, where ``X Dᵀ`` is computed once and
    ``D_S Dᵀ`` gains one row per step. The least-squares refit is one batched QR solve over the
    group (pseudo-inverse where the selected atoms are linearly dependent). Groups are processed in chunks so that the [chunk, row,
    atom] correlation tensor stays under ``max_elements``.

    Args:
        X: [group, row, d_model] signals (e.g. one centred head-write matrix per head).
        D: [atom, d_model] dictionary; rows are L2-normalised here if they are not already.
        k: atoms to select (1..n_atoms).
        dtype: computation dtype (float64 by default, so ties and near-ties resolve as in
            :func:`somp_naive`).

    Example:
        >>> fit = somp(torch.randn(3, 10, 8), torch.randn(20, 8), k=4)
        >>> fit.support.shape, bool((fit.explained.diff(dim=1) >= -1e-9).all())
        (torch.Size([3, 4]), True)
    """
    atoms = check_somp(X, D, k)
    dev = X.device
    Dm = atoms.to(dev, dtype)
    Dm = Dm / Dm.norm(dim=1, keepdim=True)
    G, n, _ = X.shape
    V = Dm.shape[0]
    chunk = max(1, max_elements // max(1, n * V))
    supports, weights, explained = [], [], []
    for g0 in tqdm(range(0, G, chunk), desc="SOMP", disable=not progress, leave=False):
        Xc = X[g0 : g0 + chunk].to(dtype)
        g = Xc.shape[0]
        total = Xc.pow(2).sum((1, 2))
        XD = Xc @ Dm.T  # [g, n, V]
        C = XD
        taken = torch.zeros(g, V, dtype=torch.bool, device=dev)
        rows = torch.arange(g, device=dev)
        S = torch.empty(g, 0, dtype=torch.long, device=dev)
        DSD = torch.empty(g, 0, V, dtype=dtype, device=dev)
        ev = []
        W = torch.zeros(g, n, 0, dtype=dtype, device=dev)
        for _ in range(k):
            score = C.abs().sum(1).masked_fill(taken, -math.inf)
            j = score.argmax(1)  # [g]
            taken[rows, j] = True
            S = torch.cat([S, j[:, None]], 1)
            DSD = torch.cat([DSD, (Dm[j] @ Dm.T)[:, None]], 1)  # [g, s, V]
            DS = Dm[S]  # [g, s, d]
            W = _lstsq_rows(DS, Xc)
            C = XD - W @ DSD
            R = Xc - W @ DS
            ev.append(_explained(R.pow(2).sum((1, 2)), total))
        supports.append(S)
        weights.append(W)
        explained.append(torch.stack(ev, 1))
    return SompFit(torch.cat(supports), torch.cat(weights), torch.cat(explained))


def somp_naive(
    X: Float[torch.Tensor, "group row d_model"],
    D: Float[torch.Tensor, "atom d_model"] | Dictionary,
    k: int,
    *,
    dtype: torch.dtype = torch.float64,
) -> SompFit:
    """Reference SOMP: one signal matrix at a time, residual correlations recomputed each step,
    refit with the pseudo-inverse. Slow and obvious; :func:`somp` is tested equal to it."""
    atoms = check_somp(X, D, k)
    Dm = atoms.to(X.device, dtype)
    Dm = Dm / Dm.norm(dim=1, keepdim=True)
    supports, weights, explained = [], [], []
    for Xg in X.to(dtype):
        total = Xg.pow(2).sum()
        R = Xg
        S: list[int] = []
        ev: list[float] = []
        W = torch.zeros(Xg.shape[0], 0, dtype=dtype, device=X.device)
        for _ in range(k):
            score = (R @ Dm.T).abs().sum(0)
            score[S] = -math.inf
            S.append(int(score.argmax()))
            DS = Dm[S]
            W = Xg @ torch.linalg.pinv(DS)
            R = Xg - W @ DS
            ev.append(float(1 - R.pow(2).sum() / total) if total > 0 else 0.0)
        supports.append(torch.tensor(S, device=X.device))
        weights.append(W)
        explained.append(torch.tensor(ev, dtype=dtype, device=X.device))
    return SompFit(torch.stack(supports), torch.stack(weights), torch.stack(explained))


__all__ = ["SompFit", "check_somp", "somp", "somp_naive"]
