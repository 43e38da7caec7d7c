"""State on disk (resume points, saved results): JSON for structure and scalars, safetensors for
tensors, both written atomically. Nothing here unpickles or executes anything read from a file.

A state is one JSON file, the commit record, and, when it holds tensors, one safetensors file
beside it named ``<json name>.<16 hex digits>.safetensors`` after the SHA-256 of its bytes. The JSON
names that file and its full hash. Every file is written to a temporary name, flushed to disk and
renamed over the target (:func:`os.replace`), tensors first: replacing the JSON is the single step
that moves a state from one write to the next, so an interrupt leaves either the old state or the
new one, never a JSON paired with another write's tensors.

Readers get the JSON payload and the tensors back only after the record's own structure and the
tensor file's hash have been checked; they then check their payload with :func:`check` and
:func:`check_tensors`. Anything unexpected raises :class:`~mechheads.errors.MechheadsError` naming
the file, what is wrong with it, and that deleting it starts afresh.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from pathlib import Path
from typing import Any

import torch

from mechheads.errors import MechheadsError

FORMAT = "mechheads-state"
VERSION = 1
_DIGEST = 16  # hex digits of the tensor file's hash in its name


def state_error(path: str | Path, problem: str) -> MechheadsError:
    """The error for a state file that cannot be used: which file, what is wrong, what to do."""
    return MechheadsError(f"state file {str(path)!r} {problem}; delete it to start afresh")


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file, fsync and :func:`os.replace`."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():  # only after a failed write: a successful one renamed it
            tmp.unlink()


def write_text(path: str | Path, text: str) -> None:
    """:func:`write_atomic` for text (UTF-8): JSON, CSV, markdown, HTML."""
    write_atomic(Path(path), text.encode("utf-8"))


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor]) -> None:
    """A safetensors file written with :func:`write_atomic` (the bytes :func:`safetensors.torch.save_file`
    would write)."""
    from safetensors.torch import save as st_save

    write_atomic(Path(path), st_save(tensors))


def _tensor_file_pattern(path: Path) -> re.Pattern[str]:
    return re.compile(re.escape(path.name) + r"\.[0-9a-f]{" + str(_DIGEST) + r"}\.safetensors")


def save(
    path: str | Path, kind: str, payload: dict[str, Any], tensors: dict[str, torch.Tensor] | None = None
) -> None:
    """Store ``payload`` (JSON values only: dicts with str keys, lists, str, int, finite float,
    bool, None) and ``tensors`` as the state ``kind`` at ``path``."""
    from safetensors.torch import save as st_save

    path = Path(path)
    record: dict[str, Any] = {"format": FORMAT, "version": VERSION, "kind": kind, "payload": payload}
    keep = None
    if tensors:
        data = st_save({k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()})
        digest = hashlib.sha256(data).hexdigest()
        keep = f"{path.name}.{digest[:_DIGEST]}.safetensors"
        write_atomic(path.with_name(keep), data)
        record["tensors"] = {"file": keep, "sha256": digest}
    else:
        record["tensors"] = None
    try:
        text = json.dumps(record, allow_nan=False, ensure_ascii=False)
    except (TypeError, ValueError) as e:  # a caller bug: a non-JSON value or a non-finite float
        raise MechheadsError(f"cannot store state {str(path)!r} as JSON: {e}") from e
    write_atomic(path, text.encode("utf-8"))
    pattern = _tensor_file_pattern(path)
    for old in path.parent.iterdir():  # tensors of earlier writes (or of a write the JSON never named)
        if old.name != keep and pattern.fullmatch(old.name):
            old.unlink(missing_ok=True)


def _reject_constant(name: str):
    raise ValueError(f"non-standard JSON constant {name}")


def load(path: str | Path, kind: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The payload and tensors of the state ``kind`` at ``path`` (which must exist)."""
    from safetensors.torch import load as st_load

    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise state_error(path, f"cannot be read ({e.strerror or e})") from None
    try:
        record = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError) as e:
        raise state_error(path, f"is not a JSON state file ({type(e).__name__}: {str(e)[:100]})") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise state_error(path, f'is not a mechheads state file (no "format": {FORMAT!r} record)')
    if record.get("version") != VERSION:
        raise state_error(path, f"has state format version {record.get('version')!r}, expected {VERSION}")
    if record.get("kind") != kind:
        raise state_error(path, f"holds a {record.get('kind')!r} state where a {kind!r} state belongs")
    check(
        path,
        record,
        {"format": str, "version": int, "kind": str, "payload": dict, "tensors": (dict, type(None))},
    )
    tensors: dict[str, torch.Tensor] = {}
    ref = record["tensors"]
    if ref is not None:
        check(path, ref, {"file": str, "sha256": str}, "tensors")
        if not _tensor_file_pattern(path).fullmatch(ref["file"]):
            raise state_error(path, f"names the tensor file {ref['file']!r}, not one of its own")
        tfile = path.with_name(ref["file"])
        if not tfile.exists():
            raise state_error(path, f"names the tensor file {ref['file']!r}, which does not exist")
        try:
            data = tfile.read_bytes()
        except OSError as e:
            raise state_error(
                path, f"names the tensor file {ref['file']!r}, which cannot be read ({e})"
            ) from None
        if hashlib.sha256(data).hexdigest() != ref["sha256"]:
            raise state_error(path, f"does not match its tensor file {ref['file']!r} (SHA-256 differs)")
        try:
            tensors = st_load(data)
        except Exception as e:  # a malformed safetensors header
            raise state_error(path, f"has an unreadable tensor file {ref['file']!r} ({e})") from None
    return record["payload"], tensors


# ----- checking what was read --------------------------------------------------------------------
Spec = Any  # a type, a tuple of types (any of), [spec] (a list of spec), or {key: spec} (exact keys)


def _type_ok(value: Any, t: type) -> bool:
    if t is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if t is float:
        return isinstance(value, float) and math.isfinite(value)
    return isinstance(value, t)


def _name(t: type) -> str:
    return "null" if t is type(None) else t.__name__


def _a(noun: str) -> str:
    return ("an " if noun[0] in "aeiou" else "a ") + noun


def check(path: str | Path, value: Any, spec: Spec, where: str = "") -> None:
    """Raise a :func:`state_error` unless ``value`` (read from ``path``) has the structure ``spec``."""
    at = where or "the top level"
    if isinstance(spec, dict):
        if not isinstance(value, dict):
            raise state_error(path, f"has {_a(_name(type(value)))} at {at} where an object belongs")
        if set(value) != set(spec):
            missing, extra = sorted(set(spec) - set(value)), sorted(set(value) - set(spec))
            raise state_error(path, f"has the wrong fields at {at} (missing {missing}, unexpected {extra})")
        for k, s in spec.items():
            check(path, value[k], s, f"{where}.{k}" if where else k)
    elif isinstance(spec, list):
        if not isinstance(value, list):
            raise state_error(path, f"has {_a(_name(type(value)))} at {at} where a list belongs")
        for i, v in enumerate(value):
            check(path, v, spec[0], f"{where}[{i}]")
    else:
        types = spec if isinstance(spec, tuple) else (spec,)
        if not any(_type_ok(value, t) for t in types):
            want = " or ".join(("finite " if t is float else "") + _name(t) for t in types)
            raise state_error(
                path,
                f"has {type(value).__name__} {str(value)[:40]!r} at {at} where {_a(want)} belongs",
            )


def check_tensors(
    path: str | Path, tensors: dict[str, torch.Tensor], spec: dict[str, tuple[tuple[int, ...], torch.dtype]]
) -> None:
    """Raise a :func:`state_error` unless ``tensors`` are exactly ``spec``'s names, shapes and dtypes,
    with finite values."""
    if set(tensors) != set(spec):
        missing, extra = sorted(set(spec) - set(tensors)), sorted(set(tensors) - set(spec))
        raise state_error(path, f"has the wrong tensors (missing {missing}, unexpected {extra})")
    for name, (shape, dtype) in spec.items():
        t = tensors[name]
        if tuple(t.shape) != tuple(shape) or t.dtype != dtype:
            raise state_error(
                path,
                f"has tensor {name!r} of shape {list(t.shape)} {t.dtype}, expected {list(shape)} {dtype}",
            )
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise state_error(path, f"has non-finite values in tensor {name!r}")

__all__ = [
    "FORMAT",
    "VERSION",
    "check",
    "check_tensors",
    "load",
    "save",
    "save_tensors",
    "state_error",
    "write_atomic",
    "write_text",
]
