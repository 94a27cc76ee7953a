"""The demo build (scripts/make_demo.sh = python -m opensora_train.demo) runs end to end.

A shrunken build (16 clips, 16 images, 2 steps per stage) goes through every stage of the real one
(synthetic data, prepare, T5, VAE spatial and temporal stages, DiT, install) and its result is
loaded by the same code as the shipped demo and generates a video.
"""

from __future__ import annotations

import json

import pytest
import torch

from opensora_core import demo as demo_files
from opensora_train import demo

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo_build")
    figures = demo.build(root / "work", root / "demo", clips=16, images=16, max_steps=2)
    return root, figures


def test_every_stage_runs_and_is_timed(built):
    _, figures = built
    assert list(figures["seconds"]) == ["data", "t5", "vae_spatial", "vae_temporal", "vae_first_frame", "vae_decoder",
                                        "dit"]
    assert figures["total_seconds"] == pytest.approx(sum(figures["seconds"].values()), abs=0.5)
    assert figures["max_steps"] == 2


def test_the_installed_demo_loads_and_generates(built):
    root, _ = built
    shipped = demo_files.load_demo(root / "demo")
    config = json.loads((root / "demo" / "demo.json").read_text())
    assert config["files"] == demo.FILES
    components = demo_files.load_components(shipped)
    from opensora_core.pipeline import generate

    spec = demo_files.demo_spec(shipped, steps=2, mask_strategy="0")  # image-to-video of a black frame
    result = generate(components, spec, [torch.zeros(1, 64, 64, 3)])
    assert result.frames.shape == (1, 17, 64, 64, 3)
    assert (root / "demo" / "inputs" / "opensora_demo_source.mp4").is_file()


def test_a_finished_stage_is_not_run_again(built):
    root, _ = built
    work = demo.Work(root / "work")
    before = work.export("dit").stat().st_mtime_ns
    assert demo.run_stage(work, "dit", max_steps=2) == work.export("dit")
    assert work.export("dit").stat().st_mtime_ns == before


def test_the_decoder_stage_changes_only_the_decoders(built):
    """The shipped VAE's encoders and shift/scale are bit for bit those of the first-frame stage: the DiT's latents
    (cached from VAE_STAGE) do not depend on whether it trains before or after the decoder stage."""
    from safetensors.torch import load_file

    root, _ = built
    work = demo.Work(root / "work")
    before, after = load_file(work.export("vae_first_frame")), load_file(work.export("vae_decoder"))
    assert before.keys() == after.keys()
    decoders = ("temporal_vae.decoder.", "temporal_vae.post_quant_conv.", "spatial_vae.module.decoder.",
                "spatial_vae.module.post_quant_conv.")
    kept = [k for k in before if not k.startswith(decoders)]
    assert {"shift", "scale"} <= set(kept) and any(k.startswith("temporal_vae.encoder.") for k in kept)
    # exact: frozen tensors are loaded and saved, never computed (no float rounding to allow for on any CPU)
    assert all(torch.equal(before[k], after[k]) for k in kept)
    # the decoders did train: even the warm-up's first Adam step (lr 5e-6) moves weights by far more than an ulp
    assert not all(torch.equal(before[k], after[k]) for k in before if k.startswith(decoders))


def test_stage_paths_point_into_the_work_folder(tmp_path):
    work = demo.Work(tmp_path)
    sets = demo.stage_overrides(work, "dit")
    assert f'vae.path="{work.export(demo.VAE_STAGE)}"' in sets and f'text_encoder.path="{work.t5}"' in sets
    # the decoder stage fits the decoders on the DiT's clips (more kinds of clip than the VAE's: demo/README.md)
    sets = demo.stage_overrides(work, "vae_decoder")
    assert f'data.csv="{work.clips_csv}"' in sets
    assert f'vae_training.checkpoint="{work.export("vae_first_frame")}"' in sets


def test_bf16_stages_fall_back_to_fp32_where_bf16_is_emulated(monkeypatch):
    from opensora_train import trainer

    monkeypatch.setattr(trainer, "native_bf16", lambda: False)
    assert demo.machine_precision("bf16") == "no" and demo.machine_precision("fp16") == "fp16"
    assert set(demo.stage_precisions().values()) == {"no"}
    monkeypatch.setattr(trainer, "native_bf16", lambda: True)
    assert demo.machine_precision("bf16") == "bf16" and demo.machine_precision("no") == "no"


def test_the_build_records_the_precision_of_every_stage(built):
    _, figures = built
    assert set(figures["precision"]) == set(demo.TRAINING_STAGES)
