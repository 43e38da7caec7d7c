"""Scores, roles and the result object of Causal Head Gating (facilitating / interfering / irrelevant / mixed / unclear).

Part of :mod:`mechheads.chg` (Nam et al., 2025, "Causal Head Gating: A Framework for Interpreting
Roles of Attention Heads in Transformers"); see the package docstring for the method.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float

from mechheads import statefiles
from mechheads.chg.config import Aggregate, CHGConfig, PhaseFit
from mechheads.errors import MechheadsError
from mechheads.statefiles import state_error

ROLES = ("facilitating", "interfering", "irrelevant", "mixed", "unclear")


# ----- results ---------------------------------------------------------------------------------
def seed_head_index(seeds: Sequence[int], L: int, H: int) -> dict[str, np.ndarray]:
    """seed, layer and head columns for arrays [seed, layer, head] flattened in C order."""
    k, l, h = np.meshgrid(np.arange(len(seeds)), np.arange(L), np.arange(H), indexing="ij")
    return {"seed": np.asarray(seeds)[k.ravel()], "layer": l.ravel(), "head": h.ravel()}


def role_labels(facilitation: np.ndarray, interference: np.ndarray, irrelevance: np.ndarray) -> np.ndarray:
    """The taxonomy label per head: the largest of the three scores; ``mixed`` when facilitation and
    interference are both ≥ 0.5 (G− open but G+ shut: the two fits disagree); ``unclear`` when all
    three scores are below 0.5, so that no role holds with even a one-in-two score (an argmax of,
    say, interference 0.016 would otherwise read as "interfering")."""
    stack = np.stack([facilitation, interference, irrelevance])
    labels = np.array(ROLES[:3])[stack.argmax(0)]
    labels = np.where(stack.max(0) < 0.5, "unclear", labels)
    return np.where((facilitation >= 0.5) & (interference >= 0.5), "mixed", labels)


@dataclass
class CHGResult:
    """Fitted CHG for K seeds: logits of the three phases, trajectories, scores as tables."""

    n_layers: int
    n_heads: int
    seeds: list[int]
    config: CHGConfig
    phases: dict[str, PhaseFit] = field(repr=False)

    @property
    def g_plus(self) -> Float[torch.Tensor, "seed layer head"]:
        return torch.sigmoid(self.phases["plus"].logits).cpu()

    @property
    def g_minus(self) -> Float[torch.Tensor, "seed layer head"]:
        return torch.sigmoid(self.phases["minus"].logits).cpu()

    @property
    def g_zero(self) -> Float[torch.Tensor, "seed layer head"]:
        return torch.sigmoid(self.phases["zero"].logits).cpu()

    def score_arrays(self) -> dict[str, np.ndarray]:
        """facilitation, interference, irrelevance as [seed, layer, head] arrays."""
        gp, gm = self.g_plus.double().numpy(), self.g_minus.double().numpy()
        return {"facilitation": gm, "interference": 1 - gp, "irrelevance": gp * (1 - gm)}

    def scores(self) -> pd.DataFrame:
        """One row per (seed, layer, head): gates of every phase, the three scores and the role."""
        s = self.score_arrays()
        df = pd.DataFrame(
            {
                **seed_head_index(self.seeds, self.n_layers, self.n_heads),
                "g_zero": self.g_zero.double().numpy().ravel(),
                "g_plus": self.g_plus.double().numpy().ravel(),
                "g_minus": self.g_minus.double().numpy().ravel(),
                **{name: v.ravel() for name, v in s.items()},
            }
        )
        df["role"] = role_labels(df.facilitation.values, df.interference.values, df.irrelevance.values)
        return df

    def aggregate(self, how: Aggregate = "always") -> pd.DataFrame:
        """Scores aggregated over seeds per head: ``always`` = min (consistent roles), ``any`` = max."""
        if how not in ("always", "any"):
            raise MechheadsError(f"aggregate must be 'always' (min over seeds) or 'any' (max), got {how!r}")
        reduce = np.min if how == "always" else np.max
        s = {k: reduce(v, axis=0) for k, v in self.score_arrays().items()}
        L, H = self.n_layers, self.n_heads
        l, h = np.meshgrid(np.arange(L), np.arange(H), indexing="ij")
        df = pd.DataFrame({"layer": l.ravel(), "head": h.ravel(), **{k: v.ravel() for k, v in s.items()}})
        df["role"] = role_labels(df.facilitation.values, df.interference.values, df.irrelevance.values)
        df.insert(0, "aggregate", how)
        return df

    def to_array(self, score: str = "facilitation", how: Aggregate | None = "always") -> np.ndarray:
        """[layer, head] array of one score aggregated over seeds (or [seed, layer, head] with how=None)."""
        arrays = self.score_arrays()
        if score not in arrays:
            raise MechheadsError(f"unknown score {score!r}; valid: {list(arrays)}")
        if how is None:
            return arrays[score]
        return self.aggregate(how)[score].to_numpy().reshape(self.n_layers, self.n_heads)

    def summary(self, threshold: float = 0.5) -> pd.DataFrame:
        """The paper's Table 2: % of heads with facilitation (F) or interference (N) ≥ threshold,
        under ``always`` (every seed) and ``any`` (at least one seed) aggregation."""
        rows = []
        for how in ("always", "any"):
            a = self.aggregate(how)
            rows.append(
                {
                    "aggregate": how,
                    "n_seeds": len(self.seeds),
                    "pct_facilitating": 100 * float((a.facilitation >= threshold).mean()),
                    "pct_interfering": 100 * float((a.interference >= threshold).mean()),
                }
            )
        return pd.DataFrame(rows)

    def ecdf(self) -> pd.DataFrame:
        """Empirical CDF of every score over all (seed, head) values (the paper's Fig. 3a)."""
        out = []
        for name, v in self.score_arrays().items():
            x = np.sort(v.ravel())
            out.append(
                pd.DataFrame({"score": name, "value": x, "proportion": np.arange(1, len(x) + 1) / len(x)})
            )
        return pd.concat(out, ignore_index=True)

    def trajectory(self, phases: Iterable[str] = ("zero", "plus", "minus")) -> pd.DataFrame:
        """Gate values after every update, tidy: phase, update, seed, layer, head, gate (Fig. 1b)."""
        out = []
        for p in phases:
            t = self.phases[p].trajectory.double().numpy()
            n, K, L, H = t.shape
            u, k, l, h = np.meshgrid(np.arange(n), np.arange(K), np.arange(L), np.arange(H), indexing="ij")
            out.append(
                pd.DataFrame(
                    {
                        "phase": p,
                        "update": u.ravel(),
                        "seed": np.asarray(self.seeds)[k.ravel()],
                        "layer": l.ravel(),
                        "head": h.ravel(),
                        "gate": t.ravel(),
                    }
                )
            )
        return pd.concat(out, ignore_index=True)

    def save(self, path: str | Path) -> None:
        """Store the fit at ``path``: a JSON file (layers, heads, seeds, config, phases) and, beside
        it, a safetensors file of every phase's logits, trajectory and losses; written atomically.
        :meth:`load` gives back an equal result."""
        c = self.config
        config = {
            "n_updates": c.n_updates,
            "n_updates_reg": c.n_updates_reg,
            "batch_size": c.batch_size,
            "lr_fit": [float(x) for x in c.lr_fit],
            "lr_reg": [float(x) for x in c.lr_reg],
            "lam": float(c.lam),
            "logit_clip": float(c.logit_clip),
            "grad_clip": None if c.grad_clip is None else float(c.grad_clip),
        }
        phases: list[dict] = []
        tensors: dict[str, torch.Tensor] = {}
        for name, ph in self.phases.items():
            parts = {"logits": ph.logits, "trajectory": ph.trajectory, "losses": ph.losses}
            phases.append(
                {
                    "phase": name,
                    "lam": float(ph.lam),
                    "n_updates": int(ph.trajectory.shape[0]),
                    "dtypes": {k: str(v.dtype).removeprefix("torch.") for k, v in parts.items()},
                }
            )
            tensors |= {f"{name}.{k}": v for k, v in parts.items()}
        payload = {
            "n_layers": self.n_layers,
            "n_heads": self.n_heads,
            "seeds": list(self.seeds),
            "config": config,
            "phases": phases,
        }
        statefiles.save(path, _RESULT_KIND, payload, tensors)

    @classmethod
    def load(cls, path: str | Path) -> CHGResult:
        """A result stored by :meth:`save` (on the CPU), after checking the file's structure, names,
        shapes and dtypes; anything unexpected raises :class:`~mechheads.errors.MechheadsError`."""
        path = Path(path)
        if not path.exists():
            raise MechheadsError(f"no CHG result at {str(path)!r}")
        payload, tensors = statefiles.load(path, _RESULT_KIND)
        dtypes = {"logits": str, "trajectory": str, "losses": str}
        spec = {
            "n_layers": int,
            "n_heads": int,
            "seeds": [int],
            "config": {
                "n_updates": int,
                "n_updates_reg": (int, type(None)),
                "batch_size": int,
                "lr_fit": [float],
                "lr_reg": [float],
                "lam": float,
                "logit_clip": float,
                "grad_clip": (float, type(None)),
            },
            "phases": [{"phase": str, "lam": float, "n_updates": int, "dtypes": dtypes}],
        }
        statefiles.check(path, payload, spec)
        L, H, seeds = payload["n_layers"], payload["n_heads"], payload["seeds"]
        if L < 1 or H < 1 or not seeds or len(set(seeds)) != len(seeds):
            raise state_error(path, f"has {L} layers, {H} heads and seeds {seeds[:10]}")
        c = payload["config"]
        try:
            config = CHGConfig(**{**c, "lr_fit": tuple(c["lr_fit"]), "lr_reg": tuple(c["lr_reg"])})
        except MechheadsError as e:
            raise state_error(path, f"has an invalid config ({e})") from None
        allowed = {"float32": torch.float32, "float64": torch.float64}
        shapes: dict[str, tuple[tuple[int, ...], torch.dtype]] = {}
        names = [p["phase"] for p in payload["phases"]]
        if sorted(names) != ["minus", "plus", "zero"]:
            raise state_error(path, f"has phases {names}, expected zero, plus and minus once each")
        for p in payload["phases"]:
            n, K = p["n_updates"], len(seeds)
            if n < 1 or not set(p["dtypes"].values()) <= set(allowed):
                raise state_error(path, f"has phase {p['phase']!r} with {n} updates and dtypes {p['dtypes']}")
            dt = {k: allowed[v] for k, v in p["dtypes"].items()}
            shapes |= {
                f"{p['phase']}.logits": ((K, L, H), dt["logits"]),
                f"{p['phase']}.trajectory": ((n, K, L, H), dt["trajectory"]),
                f"{p['phase']}.losses": ((n, K), dt["losses"]),
            }
        statefiles.check_tensors(path, tensors, shapes)
        phases = {
            p["phase"]: PhaseFit(
                p["phase"],
                p["lam"],
                tensors[f"{p['phase']}.logits"],
                tensors[f"{p['phase']}.trajectory"],
                tensors[f"{p['phase']}.losses"],
            )
            for p in payload["phases"]
        }
        return cls(L, H, seeds, config, phases)


_RESULT_KIND = "chg-result"


__all__ = ["CHGResult", "ROLES", "role_labels", "seed_head_index"]
