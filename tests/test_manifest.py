"""pbhw.core.manifest: the typed, versioned manifest, its JSON round trip and its refusals."""

import copy
import dataclasses
import json

import pytest

from pbhw.core.config import WeightPrediction, from_dict
from pbhw.core.errors import InputError, ManifestError
from pbhw.core.fixed import Rounding
from pbhw.core.manifest import MANIFEST_VERSION, Manifest
from rtl_gen.design import build_design
from rtl_gen.generate import manifest_of, top_name


@pytest.fixture(scope="module")
def manifest():
    config = from_dict({"name": "small", "network": {"layers": [4, 3, 2]}})
    design = build_design(config)
    design.discard()
    return manifest_of(design, top=top_name(config))


def test_json_round_trip_is_exact(manifest):
    raw = manifest.to_json()
    assert raw["manifest_version"] == MANIFEST_VERSION == 4
    assert raw["files"] == {} and manifest.files is None
    again = Manifest.from_json(json.loads(json.dumps(raw)))
    assert again == manifest
    assert again.to_json() == raw


def test_attributes_are_typed(manifest):
    layer = manifest.layers[0]
    assert layer.prediction is WeightPrediction.VELOCITY
    assert layer.formats.weight.rounding is Rounding.HALF_EVEN
    assert layer.formats.role("velocity") == layer.formats.velocity
    assert list(layer.formats.roles()) == list(manifest.to_json()["layers"][0]["formats"])
    assert manifest.multipliers.data == sum(la.multipliers.data for la in manifest.layers)
    assert all(isinstance(s.count, int) for s in layer.multiplier_shapes)
    assert manifest.config.network.layers == (4, 3, 2)


def test_manifest_is_immutable(manifest):
    with pytest.raises(dataclasses.FrozenInstanceError):
        manifest.top = "other"  # type: ignore[misc]
    with pytest.raises(TypeError):
        manifest.layers[0].memory_bits["weight"] = 0  # type: ignore[index]


def test_write_and_read(manifest, tmp_path):
    path = tmp_path / "manifest.json"
    manifest.write(path)
    assert path.read_text() == json.dumps(manifest.to_json(), indent=2) + "\n"
    assert Manifest.read(path) == manifest
    assert Manifest.read(tmp_path) == manifest  # a generate output directory


def refusal(raw) -> str:
    with pytest.raises(ManifestError) as info:
        Manifest.from_json(raw)
    assert isinstance(info.value, InputError)
    return str(info.value)


def test_refuses_another_version_and_foreign_json(manifest):
    raw = manifest.to_json()
    for version in (3, 5, "4", None):
        message = refusal({**raw, "manifest_version": version})
        assert f"'manifest_version' must be 4, not {version!r}" in message
    assert "'manifest_version'" in refusal({"name": "x"})
    assert "must be a JSON object with a 'manifest_version'" in refusal([1, 2])


def test_names_the_bad_field(manifest):
    raw = manifest.to_json()
    bad = copy.deepcopy(raw)
    bad["layers"][1]["lanes"] = "6"
    assert refusal(bad) == "manifest field 'layers.1.lanes' must be an integer, not '6'"
    bad = copy.deepcopy(raw)
    del bad["layers"][0]["formats"]["error"]["frac"]
    assert refusal(bad) == "manifest field 'layers.0.formats.error.frac' is missing"
    bad = copy.deepcopy(raw)
    bad["layers"][0]["prediction"] = "sometimes"
    assert "manifest field 'layers.0.prediction' must be one of 'none'" in refusal(bad)
    bad = {**raw, "extra": 1}
    assert refusal(bad) == "manifest field 'extra' is not part of manifest_version 4"
    bad = {**raw, "config": {"optimizer": {"lr": -1}}}
    assert refusal(bad).startswith("manifest field 'config' is not a valid config:")


def test_read_refuses_missing_and_broken_files(tmp_path):
    with pytest.raises(ManifestError, match="does not exist"):
        Manifest.read(tmp_path / "manifest.json")
    (tmp_path / "manifest.json").write_text("{")
    with pytest.raises(ManifestError, match="is not valid JSON"):
        Manifest.read(tmp_path / "manifest.json")
    (tmp_path / "manifest.json").write_text('{"manifest_version": 1}')
    with pytest.raises(ManifestError, match=r"manifest\.json': manifest field 'manifest_version'"):
        Manifest.read(tmp_path / "manifest.json")


def test_constructing_another_version_is_refused(manifest):
    with pytest.raises(ManifestError, match="manifest_version must be 4, not 1"):
        dataclasses.replace(manifest, manifest_version=1)
