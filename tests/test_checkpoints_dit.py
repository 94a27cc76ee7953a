"""Loading diffusion-transformer checkpoints: detection, config inference, formats, helpful errors."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import reference_dir
from opensora_core import checkpoints as ck
from opensora_core import loading
from opensora_core.families import build_model
from opensora_core.models import find_preset

TINY = {
    "STDiT3": dict(hidden_size=64, depth=2, num_heads=4, caption_channels=32, model_max_length=12),
    # input_sq_size cannot be read from weights; loaders assume the released 512 unless the file says otherwise
    "STDiT2": dict(hidden_size=72, depth=2, num_heads=4, caption_channels=32, model_max_length=12, input_sq_size=512),
    "STDiT": dict(hidden_size=64, depth=2, num_heads=4, caption_channels=32, model_max_length=12, input_size=[4, 8, 8]),
}
MANIFESTS = {
    "v1_2/manifest_stdit3_xl2.json": ("STDiT3", "STDiT3-XL/2"),
    "v1_1/manifest_stdit2_xl2_stage3.json": ("STDiT2", "STDiT2-XL/2"),
    "v1_1/manifest_stdit_v1_0_xl2_16x512x512.json": ("STDiT", "STDiT-XL/2-16x512x512"),
    "v1_1/manifest_stdit_v1_0_xl2_16x256x256.json": ("STDiT", "STDiT-XL/2-16x256x256"),
}


def _tiny(class_name: str, seed: int = 0):
    torch.manual_seed(seed)
    model = build_model(class_name, TINY[class_name])
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.05)
    return model.eval()


def _inputs(class_name: str):
    g = torch.Generator().manual_seed(3)
    frames = 4
    kwargs = dict(y=torch.randn(2, 1, 12, 32, generator=g), mask=torch.ones(2, 12, dtype=torch.long))
    if class_name != "STDiT":
        kwargs.update(height=torch.tensor([64.0, 64.0]), width=torch.tensor([64.0, 64.0]),
                      fps=torch.tensor([24.0, 24.0]), num_frames=torch.tensor([4.0, 4.0]), ar=torch.tensor([1.0, 1.0]))
    return torch.randn(2, 4, frames, 8, 8, generator=g), torch.tensor([500.0, 20.0]), kwargs


@pytest.mark.parametrize("manifest", list(MANIFESTS))
def test_full_size_config_is_inferred_from_shapes(manifest):
    root = reference_dir()
    if root is None:
        pytest.skip("reference set not found")
    data = json.loads((root / manifest).read_text())
    shapes = {**data["params"], **data["buffers"]}
    state = {k: torch.empty(v, device="meta") for k, v in shapes.items()}
    class_name, config = loading.infer_dit_config(state)
    assert (class_name, find_preset(class_name, config)) == MANIFESTS[manifest]
    with torch.device("meta"):
        model = build_model(class_name, config)
    ck.check_state_dict(model, state, source=manifest)


def test_released_v1_0_pth_without_position_tables_loads(tmp_path):
    """The released v1.0 .pth files omit pos_embed/pos_embed_temporal; the model rebuilds them."""
    model = _tiny("STDiT")
    weights = {k: v for k, v in model.state_dict().items() if not k.startswith("pos_embed")}
    torch.save(weights, tmp_path / "OpenSora-v1-tiny.pth")
    loaded = loading.load_dit(tmp_path / "OpenSora-v1-tiny.pth", config_overrides={"input_size": [4, 8, 8], "num_heads": 4})
    x, t, kw = _inputs("STDiT")
    torch.testing.assert_close(loaded.model(x, t, **kw), model(x, t, **kw))


@pytest.mark.parametrize("class_name", ["STDiT3", "STDiT2"])
@pytest.mark.parametrize("layout", ["safetensors", "hf_folder", "pth_ema", "comfy_prefixed"])
def test_load_dit_roundtrip(tmp_path, class_name, layout):
    model = _tiny(class_name)
    state = model.state_dict()
    if layout == "safetensors":
        path = ck.save_checkpoint(state, tmp_path / "m.safetensors")
    elif layout == "hf_folder":
        path = tmp_path / "hub"
        ck.save_checkpoint(state, path / "model.safetensors")
        (path / "config.json").write_text(json.dumps({"architectures": [class_name], **TINY[class_name]}))
    elif layout == "pth_ema":
        path = tmp_path / "ema.pt"
        torch.save({"ema": state}, path)
    else:
        path = ck.save_checkpoint({f"model.diffusion_model.{k}": v for k, v in state.items()}, tmp_path / "c.safetensors")
    loaded = loading.load_dit(path, dtype=torch.float32)
    assert loaded.class_name == class_name and loaded.config["depth"] == 2
    x, t, kw = _inputs(class_name)
    torch.testing.assert_close(loaded.model(x, t, **kw), model(x, t, **kw))


def test_load_dit_casts_to_bf16(tmp_path):
    path = ck.save_checkpoint(_tiny("STDiT3").state_dict(), tmp_path / "m.safetensors")
    loaded = loading.load_dit(path, dtype=torch.bfloat16)
    assert {p.dtype for p in loaded.model.parameters()} == {torch.bfloat16}
    x, t, kw = _inputs("STDiT3")
    assert loaded.model(x, t, **kw).dtype == torch.float32


def test_v1_0_heads_must_be_given_when_the_file_cannot_tell(tmp_path):
    weights = {k: v for k, v in _tiny("STDiT").state_dict().items() if not k.startswith("pos_embed")}
    torch.save(weights, tmp_path / "v1.pth")
    with pytest.raises(ck.CheckpointError, match="pass num_heads"):
        loading.load_dit(tmp_path / "v1.pth", config_overrides={"input_size": [4, 8, 8]})


def test_v1_1_file_chosen_as_stdit3_names_the_fix(tmp_path):
    path = ck.save_checkpoint(_tiny("STDiT2").state_dict(), tmp_path / "stage3.safetensors")
    with pytest.raises(ck.CheckpointError, match="pick STDiT2"):
        loading.load_dit(path, class_name="STDiT3")


def test_vae_file_given_as_model_names_the_fix(tmp_path):
    vae_like = {"temporal_vae.encoder.conv_in.conv.weight": torch.zeros(2, 4, 3, 3, 3),
                "spatial_vae.module.encoder.conv_in.weight": torch.zeros(2, 3, 3, 3)}
    path = ck.save_checkpoint(vae_like, tmp_path / "vae.safetensors")
    with pytest.raises(ck.CheckpointError, match="this is a VAE file"):
        loading.load_dit(path)


def test_wrong_caption_length_is_explained():
    model = build_model("STDiT3", {**TINY["STDiT3"], "model_max_length": 20})
    with pytest.raises(ck.CheckpointMismatchError, match="caption length"):
        loading.load_dit_weights(model, _tiny("STDiT3").state_dict(), source="m.safetensors")


def test_saved_config_in_metadata_is_read_back(tmp_path):
    model = _tiny("STDiT3")
    config = {**TINY["STDiT3"], "input_sq_size": 256}
    path = ck.save_checkpoint(model.state_dict(), tmp_path / "m.safetensors", class_name="STDiT3", config=config)
    loaded = loading.load_dit(path)
    assert loaded.config["input_sq_size"] == 256
