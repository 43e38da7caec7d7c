"""Resume state of the report: each finished section as JSON (tables with their dtypes), with a
fingerprint of the model, task and options; anything else in a state file is refused."""

from __future__ import annotations

import hashlib
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd

from mechheads import statefiles
from mechheads.errors import MechheadsError
from mechheads.model import HeadModel
from mechheads.report.config import STATE_VERSION, ReportConfig
from mechheads.report.page import Section
from mechheads.statefiles import state_error
from mechheads.tasks.core import Task


# ----- fingerprints and state --------------------------------------------------------------------
def _fingerprint(model: HeadModel, task: Task, corrupted: Task | None, cfg: ReportConfig) -> str:
    """Identity of a report's inputs (a section's state key adds its name to it)."""
    h = hashlib.sha256()
    h.update(repr((STATE_VERSION, model.name, model.cfg, model.backend)).encode())
    for w in model.parameters():  # every weight: a retrained or edited model never resumes old sections
        h.update(w.detach().float().cpu().numpy().tobytes())
    for t in (task, corrupted):
        if t is not None:
            h.update(repr((t.name, t.prompts, t.targets, t.alt_targets)).encode())
    h.update(repr(sorted(asdict(cfg).items())).encode())
    return h.hexdigest()


_SECTION_KIND = "report-section"
_DTYPES = {"bool", "object", "str", "string", "float32", "float64"} | {
    f"{u}int{b}" for u in ("", "u") for b in (8, 16, 32, 64)
}
_NONFINITE = {"nan": float("nan"), "inf": float("inf"), "-inf": float("-inf")}


def _encode_value(v):
    """A table cell as JSON: null, bool, int, str, a finite float, {"float": "nan"|"inf"|"-inf"}
    or {"missing": "NA"} (pandas' ``pd.NA``)."""
    if v is pd.NA:
        return {"missing": "NA"}
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not np.isfinite(v):
        return {"float": "nan" if v != v else ("inf" if v > 0 else "-inf")}
    if isinstance(v, (bool, int, float, str)):
        return v
    raise MechheadsError(f"report state: cannot store a table cell of type {type(v).__name__}")


def _encode_table(name: str, df: pd.DataFrame) -> dict:
    if not all(isinstance(c, str) for c in df.columns) or df.columns.duplicated().any():
        raise MechheadsError(f"report state: table {name!r} needs unique string column names")
    if not pd.api.types.is_integer_dtype(df.index.dtype):
        raise MechheadsError(f"report state: table {name!r} needs an integer index")
    columns = []
    for c in df.columns:
        dtype = str(df[c].dtype)
        if dtype not in _DTYPES:
            raise MechheadsError(
                f"report state: column {c!r} of table {name!r} has unsupported dtype {dtype}"
            )
        columns.append({"name": c, "dtype": dtype, "values": [_encode_value(v) for v in df[c].tolist()]})
    return {"name": name, "index": [int(i) for i in df.index], "columns": columns}


def _decode_value(path: Path, v, where: str):
    if isinstance(v, dict):
        if v == {"missing": "NA"}:
            return pd.NA
        if set(v) != {"float"} or v["float"] not in _NONFINITE:
            raise state_error(path, f"has an unknown cell encoding {str(v)[:40]} in {where}")
        return _NONFINITE[v["float"]]
    if v is not None and not isinstance(v, (bool, int, float, str)):
        raise state_error(path, f"has a {type(v).__name__} cell in {where}")
    return v


def _decode_table(path: Path, t: dict) -> pd.DataFrame:
    name = t["name"]
    if t["index"] == list(range(len(t["index"]))):
        index = pd.RangeIndex(len(t["index"]))
    else:
        try:
            index = pd.Index(t["index"], dtype="int64")
        except OverflowError:
            raise state_error(path, f"has an index outside int64 in table {name!r}") from None
    data = {}
    for c in t["columns"]:
        where = f"column {c['name']!r} of table {name!r}"
        if c["dtype"] not in _DTYPES:
            raise state_error(path, f"has unsupported dtype {c['dtype']!r} in {where}")
        if len(c["values"]) != len(index) or c["name"] in data:
            raise state_error(
                path, f"has {len(c['values'])} values for {len(index)} rows (or a repeated column) in {where}"
            )
        values = [_decode_value(path, v, where) for v in c["values"]]
        try:
            data[c["name"]] = pd.Series(values, dtype=c["dtype"], index=index)
        except (TypeError, ValueError, OverflowError) as e:
            raise state_error(path, f"has values that are not {c['dtype']} in {where} ({e})") from None
    return pd.DataFrame(data, index=index)


_SECTION_SPEC = {
    "fingerprint": str,
    "section": {
        "key": str,
        "title": str,
        "parts": [str],
        "seconds": float,
        "tables": [{"name": str, "index": [int], "columns": [{"name": str, "dtype": str, "values": list}]}],
    },
}


def _load_state(path: Path, fingerprint: str) -> Section | None:
    """The section stored at ``path`` if it was computed from the same inputs, else None.

    The file is JSON (:mod:`mechheads.statefiles`), checked field by field before use; a file that is
    not such a state raises :class:`~mechheads.errors.MechheadsError` (delete it to recompute).
    """
    if not path.exists():
        return None
    payload, tensors = statefiles.load(path, _SECTION_KIND)
    statefiles.check(path, payload, _SECTION_SPEC)
    if tensors:
        raise state_error(path, f"has tensors {sorted(tensors)}, but a report section has none")
    if payload["fingerprint"] != fingerprint:
        return None  # other inputs (model weights, task or options): recompute
    s = payload["section"]
    tables = {}
    for t in s["tables"]:
        if t["name"] in tables:
            raise state_error(path, f"has table {t['name']!r} twice")
        tables[t["name"]] = _decode_table(path, t)
    return Section(s["key"], s["title"], list(s["parts"]), tables, s["seconds"])


def _save_state(path: Path, fingerprint: str, section: Section) -> None:
    """Store a finished section as JSON, atomically (an interrupt never leaves a half-written file)."""
    payload = {
        "fingerprint": fingerprint,
        "section": {
            "key": section.key,
            "title": section.title,
            "parts": list(section.parts),
            "seconds": float(section.seconds),
            "tables": [_encode_table(name, df) for name, df in section.tables.items()],
        },
    }
    statefiles.save(path, _SECTION_KIND, payload)


__all__: list[str] = []  # the resume state is internal to build_report
