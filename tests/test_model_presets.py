"""Presets of every diffusion class in ``models._CLASSES``: each class names the config fields its presets
differ in, and ``find_preset`` recognises a preset by those fields only."""

from __future__ import annotations

import dataclasses

import pytest

from opensora_core import models


@pytest.mark.parametrize("class_name", models.class_names())
def test_every_class_declares_architecture_fields_of_its_config(class_name):
    cls = models.model_class(class_name)
    fields = models.architecture_fields(class_name)
    assert set(fields) <= set(cls.CONFIG.__dataclass_fields__)


@pytest.mark.parametrize("name", list(models.presets()))
def test_find_preset_recognises_each_preset_from_its_config(name):
    class_name, config = models.presets()[name]
    assert models.find_preset(class_name, dataclasses.asdict(config)) == name


@pytest.mark.parametrize(("class_name", "field", "value"), [
    ("OpenSoraT2V_v1_3", "num_layers", 2),
    ("OpenSoraInpaint_v1_3", "vae_scale_factor_t", 2),
    ("MMDiTModel", "depth", 2),
    ("STDiT3", "depth", 2),
])
def test_a_config_of_another_size_matches_no_preset(class_name, field, value):
    _, config = next(entry for entry in models.presets().values() if entry[0] == class_name)
    assert models.find_preset(class_name, {**dataclasses.asdict(config), field: value}) is None
