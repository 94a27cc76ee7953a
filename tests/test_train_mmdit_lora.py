"""LoRA fine-tuning of the Open-Sora 2.0 MMDiT (train/mmdit_lora.py) and the official 2.0 flow loss, on tiny
models: the loss formula, adapters over bf16/fp32 and fp8 bases, block swap + activation checkpointing giving
the same gradients, the ComfyUI LoRA file merging back, and the command line end to end."""

from __future__ import annotations

import pytest
import torch
import tiny_v2

from opensora_core.lora import merge_lora
from opensora_core.models.block_swap import block_swap_of
from opensora_core.models.fp8 import Fp8Operations
from opensora_core.models.mmdit import pack, prepare_inputs
from opensora_core.sampling.v2 import shift_alpha
from opensora_core.sampling.v2_losses import SIGMA_MIN, V2FlowObjective, sample_times, training_alpha
from opensora_train.mmdit_lora import (
    EncodedClip,
    LoRAConfig,
    add_adapters,
    prepare_model,
    save_adapters,
    train_lora,
)

TINY = {**tiny_v2.TINY, "depth": 1, "depth_single_blocks": 2}


def _model(seed: int = 0, fp8: bool = False):
    model = tiny_v2.mmdit(seed, depth=1, depth_single_blocks=2)
    if not fp8:
        return model
    quantised = type(model).from_official_config(TINY, operations=Fp8Operations)
    quantised.load_state_dict(model.state_dict(), strict=False)  # fp8 layers quantise; scales are extra
    return quantised.eval()


def _example(seed: int = 1, frames: int = 3) -> EncodedClip:
    g = torch.Generator().manual_seed(seed)
    return EncodedClip(torch.randn(1, 16, frames, 4, 6, generator=g), torch.randn(1, 5, tiny_v2.TXT_DIM, generator=g),
                       torch.randn(1, tiny_v2.VEC_DIM, generator=g))


def test_times_are_logit_normal_shifted_like_the_schedule():
    alpha = training_alpha((1, 16, 3, 4, 6))
    assert alpha == pytest.approx(shift_alpha(6, 3))  # 4x6 latent pixels = 6 tokens of 2x2 per frame
    g = torch.Generator().manual_seed(0)
    n = torch.randn(4, generator=torch.Generator().manual_seed(0))
    s = torch.sigmoid(n)
    torch.testing.assert_close(sample_times(4, alpha, g), alpha * s / (1 + (alpha - 1) * s))


def test_loss_is_the_mse_to_the_official_velocity():
    """x_t = (1 - t) x0 + (1 - (1 - sigma_min)(1 - t)) x1; target (1 - sigma_min) x1 - x0; the model sees t."""
    ex, objective = _example(), V2FlowObjective()
    x1, t = torch.randn(ex.latent.shape), torch.tensor([0.3])
    seen = {}

    def model(img, timesteps, **kw):
        seen.update(img=img, t=timesteps, cond=kw["cond"])
        return torch.zeros_like(img)

    loss = objective.loss(model, ex.latent, ex.txt, ex.y_vec, t=t, noise=x1)
    x_t = 0.7 * ex.latent + (1 - (1 - SIGMA_MIN) * 0.7) * x1
    target = (1 - SIGMA_MIN) * x1 - ex.latent
    torch.testing.assert_close(seen["img"], pack(x_t))
    torch.testing.assert_close(loss, (target**2).mean())
    assert float(seen["t"]) == pytest.approx(0.3) and not seen["cond"].any()  # t2v: zero condition channels


@pytest.mark.parametrize("fp8", [False, True], ids=["fp32", "fp8"])
def test_fresh_adapters_change_nothing_and_only_they_train(fp8):
    model = _model(fp8=fp8)
    ex = _example()
    inputs = {**prepare_inputs(ex.latent, ex.txt, ex.y_vec), "timesteps": torch.tensor([0.5]),
              "cond": torch.zeros(1, 18, 68)}
    before = model(**inputs)
    paths = add_adapters(model, LoRAConfig(rank=2))
    assert len(paths) == 12 + 2 * 4  # one double block (12 targets) and two single blocks (4 each)
    torch.testing.assert_close(model(**inputs), before)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)


def _grads(model, config):
    """Adapter gradients of one loss with fixed time and noise (model prepared as ``config`` says)."""
    prepare_model(model, config, "cpu")
    ex = _example()
    loss = V2FlowObjective().loss(model, ex.latent, ex.txt, ex.y_vec, t=torch.tensor([0.6]),
                                  noise=torch.randn(ex.latent.shape, generator=torch.Generator().manual_seed(3)))
    loss.backward()
    return float(loss.detach()), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def test_block_swap_with_checkpointing_gives_the_plain_gradients():
    """Swap copies the frozen blocks in (again for the recompute); checkpointing recomputes: same maths."""
    loss_a, a = _grads(_model(), LoRAConfig(rank=2, gradient_checkpointing=False))
    model = _model()
    loss_b, b = _grads(model, LoRAConfig(rank=2, gradient_checkpointing=True, blocks_on_device=1))
    assert block_swap_of(model).copies >= 4  # 2 swapped blocks, forward and recompute
    assert loss_a == pytest.approx(loss_b, rel=1e-6) and a.keys() == b.keys()
    for name in a:  # float32 sums in another order: relative to the largest gradient
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-6 * float(a[name].abs().max()) + 1e-12)


def test_block_swap_without_checkpointing_is_refused():
    with pytest.raises(ValueError, match="gradient_checkpointing"):
        train_lora(_model(), [_example()], LoRAConfig(steps=1, gradient_checkpointing=False, blocks_on_device=1))


def _fixed_loss(model, ex) -> float:
    """The loss at three fixed times with fixed noise (no training draws)."""
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        return sum(float(V2FlowObjective().loss(model, ex.latent, ex.txt, ex.y_vec, t=torch.tensor([t]),
                                                noise=torch.randn(ex.latent.shape, generator=g)))
                   for t in (0.2, 0.5, 0.8)) / 3


def test_training_on_an_fp8_base_with_swap_lowers_the_loss():
    model, ex = _model(fp8=True), _example()
    before = _fixed_loss(model, ex)
    train_lora(model, [ex], LoRAConfig(rank=4, steps=40, learning_rate=1e-2, blocks_on_device=1))
    assert _fixed_loss(model, ex) < 0.95 * before  # 40 steps on one random latent: about -10 %; unchanged if broken


def test_the_saved_lora_merges_into_the_released_layout(tmp_path):
    """The file has ComfyUI's keys; merged into a plain model it gives the adapted model's output."""
    model = _model()
    config = LoRAConfig(rank=2, steps=3, learning_rate=5e-2)
    train_lora(model, [_example()], config)
    path = save_adapters(model, tmp_path / "lora.safetensors", config)
    merged = _model()
    names = merge_lora(merged, path)
    assert "double_blocks.0.img_attn.q_proj" in names and len(names) == 20
    ex = _example(seed=5)
    inputs = {**prepare_inputs(ex.latent, ex.txt, ex.y_vec), "timesteps": torch.tensor([0.4]),
              "cond": torch.zeros(1, 18, 68)}
    with torch.no_grad():
        torch.testing.assert_close(merged(**inputs), model(**inputs), rtol=1e-4, atol=1e-5)


def test_command_line_trains_from_captioned_clips(tmp_path):
    pytest.importorskip("transformers")
    import tiny_v2_files

    from opensora_train.cli import main
    from opensora_train.synthetic import write_dataset

    models = tiny_v2_files.write_models(tmp_path / "models")
    write_dataset(tmp_path / "clips", 1, seed=0, num_frames=9, height=32, width=48)
    text, out = models / "text_encoders", tmp_path / "lora.safetensors"
    assert main(["lora-v2", str(tmp_path / "clips"), "--model", str(models / "diffusion_models/Open_Sora_v2.safetensors"),
                 "--vae", str(models / "vae/hunyuan_vae.safetensors"), "--text-encoder", str(text / "t5"),
                 "--clip", str(text / "clip"), "--height", "32", "--width", "48", "--num-frames", "9",
                 "--steps", "2", "--rank", "2", "--fp8", "--blocks-on-device", "1", "--device", "cpu",
                 "-o", str(out)]) == 0
    assert len(merge_lora(tiny_v2_files.mmdit(), out)) == 16  # every adapted layer of the file's model
