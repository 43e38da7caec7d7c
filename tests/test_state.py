"""State files (mechheads.statefiles): JSON + safetensors, atomic, checked before use, never unpickled."""

import pickle

import pytest
import torch

from mechheads import MechheadsError, statefiles


class _Marker:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):  # unpickling would create the marker file
        return (type(self.path).touch, (self.path,))


def test_round_trip_and_one_tensor_file_per_state(tmp_path):
    path = tmp_path / "s.json"
    statefiles.save(path, "demo", {"a": 1, "b": [1.5, "x", None, True]}, {"t": torch.arange(6.0).view(2, 3)})
    statefiles.save(path, "demo", {"a": 2, "b": []}, {"t": torch.ones(2, 3)})
    payload, tensors = statefiles.load(path, "demo")
    assert payload == {"a": 2, "b": []} and torch.equal(tensors["t"], torch.ones(2, 3))
    assert sorted(p.suffix for p in tmp_path.iterdir()) == [
        ".json",
        ".safetensors",
    ]  # old tensors gone, no .tmp
    statefiles.save(path, "demo", {"a": 3})
    assert [p.name for p in tmp_path.iterdir()] == ["s.json"] and statefiles.load(path, "demo") == ({"a": 3}, {})


def test_pickle_and_foreign_files_are_refused_without_running_them(tmp_path):
    path, marker = tmp_path / "s.json", tmp_path / "ran"
    path.write_bytes(pickle.dumps([_Marker(marker)]))
    with pytest.raises(
        MechheadsError, match=r"s\.json' is not a JSON state file .*delete it to start afresh"
    ):
        statefiles.load(path, "demo")
    assert not marker.exists()
    for text, msg in [
        ("[1, 2]", "is not a mechheads state file"),
        (
            '{"format": "mechheads-state", "version": 1, "kind": "demo", "payload": {"x": NaN}, "tensors": null}',
            "non-standard JSON constant NaN",
        ),
        (
            '{"format": "mechheads-state", "version": 7, "kind": "demo", "payload": {}, "tensors": null}',
            "format version 7",
        ),
        (
            '{"format": "mechheads-state", "version": 1, "kind": "demo", "payload": [], "tensors": null}',
            "has list",
        ),
    ]:
        path.write_text(text)
        with pytest.raises(MechheadsError, match=msg):
            statefiles.load(path, "demo")


def test_checks_name_the_field_and_the_problem(tmp_path):
    p = tmp_path / "s.json"
    spec = {"n": int, "xs": [float], "inner": {"name": (str, type(None))}}
    statefiles.check(p, {"n": 1, "xs": [0.5], "inner": {"name": None}}, spec)
    bad = [
        ({"n": True, "xs": [], "inner": {"name": "a"}}, "has bool 'True' at n where an int belongs"),
        ({"n": 1, "xs": [1], "inner": {"name": "a"}}, r"at xs\[0\] where a finite float belongs"),
        ({"n": 1, "xs": [], "inner": {"name": 3}}, "at inner.name where a str or null belongs"),
        ({"n": 1, "xs": []}, r"wrong fields at the top level \(missing \['inner'\]"),
    ]
    for value, msg in bad:
        with pytest.raises(MechheadsError, match=msg):
            statefiles.check(p, value, spec)
    with pytest.raises(
        MechheadsError, match=r"tensor 't' of shape \[2\] torch.int64, expected \[2\] torch.float32"
    ):
        statefiles.check_tensors(p, {"t": torch.tensor([1, 2])}, {"t": ((2,), torch.float32)})
    with pytest.raises(MechheadsError, match=r"wrong tensors \(missing \[\], unexpected \['u'\]\)"):
        statefiles.check_tensors(p, {"t": torch.ones(2), "u": torch.ones(1)}, {"t": ((2,), torch.float32)})


def test_a_non_json_payload_is_a_caller_error_and_leaves_no_file(tmp_path):
    path = tmp_path / "s.json"
    with pytest.raises(MechheadsError, match="cannot store state"):
        statefiles.save(path, "demo", {"x": float("inf")})
    assert list(tmp_path.iterdir()) == []


def test_a_directory_or_a_missing_tensor_file_is_a_state_error(tmp_path):
    (tmp_path / "d.json").mkdir()
    with pytest.raises(MechheadsError, match=r"d\.json' cannot be read"):
        statefiles.load(tmp_path / "d.json", "demo")
    path = tmp_path / "s.json"
    statefiles.save(path, "demo", {}, {"t": torch.ones(1)})
    next(tmp_path.glob("s.json.*.safetensors")).unlink()
    with pytest.raises(MechheadsError, match="which does not exist; delete it to start afresh"):
        statefiles.load(path, "demo")
