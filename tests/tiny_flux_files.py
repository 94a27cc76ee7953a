"""The smallest FLUX.1-class files ComfyUI 0.3.64 accepts, under the names Flux users have, for running
``workflows/open_sora_2_text_to_image_to_video.json`` in a real ComfyUI (``shared/comfy_host/run_pack.py``).

ComfyUI reads only part of a Flux set's configuration from the files, so some files cannot be tiny:

* ``diffusion_models/flux1-dev.safetensors``: ComfyUI counts the double and single blocks from the keys but fixes
  the width (3072, 24 heads) and the T5 width (4096); the smallest file it detects as FLUX.1-dev has 1 double
  block, no single block and the guidance embedder (0.40B parameters, bf16, 0.8 GB). Built with our MMDiT class
  in the official FLUX.1-dev configuration (fused qkv, guidance embedding, no condition embedder);
* ``vae/ae.safetensors``: ComfyUI reads only the latent channels (16); the levels are fixed (128/256/512/512),
  so this is the full-size FLUX.1 autoencoder architecture (84M parameters, float32, LDM key layout);
* ``text_encoders/clip_l.safetensors``: ComfyUI builds CLIP-L from a fixed config, so full size (123M, fp16).
  It replaces the tiny file of ``tiny_v2_files.py``: both the Flux and the 2.0 text encoders read it, so the
  tiny 2.0 MMDiT is rewritten with ``vec_in_dim`` 768 for its pooled vector;
* ``text_encoders/t5xxl_fp8_e4m3fn.safetensors``: ComfyUI builds T5-XXL from a fixed config (4.76B parameters)
  and keeps it in the file's dtype when that is smaller than fp16, so the cheapest T5 it runs is the full-size
  fp8 file Flux users have (4.8 GB on disk, 4.4 GiB in RAM; written tensor by tensor, never held whole). The
  2.0 chain keeps the tiny ``t5xxl_fp16.safetensors`` (our T5 loader would load the fp8 file in bf16, 9.5 GB).

Random weights (N(0, 0.02), norm gains 1): the outputs are noise; the run checks loading, shapes and wiring.
``--workflow`` writes the shipped workflow at a reduced size for these files (Flux image 64x32 in 1 step,
video 48x32, 9 frames, 2 steps; Flux's T5 from the fp8 file)::

    python tests/tiny_v2_files.py DIR --comfy-tokenizers
    python tests/tiny_flux_files.py DIR --workflow WORKFLOW_DIR     # adds about 6 GB of files to DIR
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent
if str(TESTS.parent) not in sys.path:  # run as a script
    sys.path.insert(0, str(TESTS.parent))
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

import tiny_v2_files  # noqa: E402
from opensora_core.checkpoints import save_checkpoint  # noqa: E402
from opensora_core.families import build_model  # noqa: E402
from opensora_core.vae.autoencoder_kl import AutoencoderKL, AutoencoderKLConfig  # noqa: E402
from opensora_core.vae.keys import to_ldm_layout  # noqa: E402

# configs/diffusion/inference/plugins/t2i2v.py ``img_flux`` (FLUX.1-dev), with the fewest blocks ComfyUI detects
FLUX_DEV = dict(
    in_channels=64, vec_in_dim=768, context_in_dim=4096, hidden_size=3072, mlp_ratio=4.0, num_heads=24,
    depth=1, depth_single_blocks=0, axes_dim=[16, 56, 56], theta=10000, qkv_bias=True, guidance_embed=True,
    cond_embed=False, fused_qkv=True, use_liger_rope=False, patch_size=2,
)
FLUX_AE = AutoencoderKLConfig(latent_channels=16, use_quant_conv=False, use_post_quant_conv=False)
CLIP_L = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
              max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768)
T5_XXL = dict(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
              feed_forward_proj="gated-gelu")
T5_FP8_NAME = "t5xxl_fp8_e4m3fn.safetensors"
STD = 0.02


def _fill_(tensors, generator: torch.Generator) -> None:
    """N(0, STD) weights, norm gains 1 and biases 0, in place (float tensors of any dtype)."""
    with torch.no_grad():
        for name, t in tensors:
            if t.ndim == 1:
                t.fill_(1.0 if name.endswith(("norm.weight", "scale", "layer_norm.weight")) else 0.0)
            else:
                t.copy_(torch.randn(t.shape, generator=generator) * STD)


def flux_unet() -> dict[str, torch.Tensor]:
    """FLUX.1-dev state dict (BFL key names, as ``flux1-dev.safetensors``) in bf16."""
    with torch.device("meta"):
        model = build_model("MMDiTModel", FLUX_DEV)
    model = model.to_empty(device="cpu").to(torch.bfloat16)
    _fill_(model.state_dict().items(), torch.Generator().manual_seed(3))
    return model.state_dict()


def flux_ae() -> dict[str, torch.Tensor]:
    """The FLUX.1 autoencoder (``ae.safetensors``: LDM layout, 16 latent channels, no quant convs), float32."""
    torch.manual_seed(4)
    return {k: v.contiguous() for k, v in to_ldm_layout(AutoencoderKL(FLUX_AE).state_dict()).items()}


def clip_l() -> dict[str, torch.Tensor]:
    """CLIP-L text model as ComfyUI keeps it (``text_model.*`` + ``text_projection.weight``), fp16."""
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    torch.manual_seed(5)
    model = CLIPTextModelWithProjection(CLIPTextConfig(**CLIP_L)).eval()
    return {k: v.half().contiguous() for k, v in model.state_dict().items() if not k.endswith("position_ids")}


def t5_xxl_shapes() -> dict[str, tuple[int, ...]]:
    """Keys and shapes of a T5-v1.1-XXL encoder file as ComfyUI keeps it (``shared.weight`` + ``encoder.*``)."""
    from transformers import T5Config, T5EncoderModel

    with torch.device("meta"):
        model = T5EncoderModel(T5Config(**T5_XXL))
    return {k: tuple(v.shape) for k, v in model.state_dict().items() if k != "encoder.embed_tokens.weight"}


def write_fp8_safetensors(path: Path, shapes: dict[str, tuple[int, ...]], seed: int = 6) -> None:
    """A safetensors file of float8_e4m3fn tensors written one at a time (the safetensors layout: 8-byte header
    length, JSON header, data), so the whole file is never in memory."""
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, shape in shapes.items():
        size = int(torch.Size(shape).numel())
        header[name] = {"dtype": "F8_E4M3", "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    generator = torch.Generator().manual_seed(seed)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text)
        for name, shape in shapes.items():
            tensor = torch.empty(shape)
            _fill_([(name, tensor)], generator)
            f.write(tensor.to(torch.float8_e4m3fn).view(torch.uint8).numpy().tobytes())


def write_models(root: Path) -> Path:
    """Add the Flux files to a models dir written by ``tiny_v2_files.py --comfy-tokenizers``."""
    (root / "diffusion_models").mkdir(parents=True, exist_ok=True)
    (root / "vae").mkdir(parents=True, exist_ok=True)
    save_file(flux_unet(), str(root / "diffusion_models" / "flux1-dev.safetensors"))
    save_file(flux_ae(), str(root / "vae" / "ae.safetensors"))
    save_file(clip_l(), str(root / "text_encoders" / "clip_l.safetensors"))
    config = {**tiny_v2_files.MMDIT, "vec_in_dim": CLIP_L["hidden_size"]}
    path = root / "diffusion_models" / "Open_Sora_v2.safetensors"
    save_checkpoint(tiny_v2_files.mmdit(config=config).state_dict(), path, class_name="MMDiTModel", config=config)
    write_fp8_safetensors(root / "text_encoders" / T5_FP8_NAME, t5_xxl_shapes())
    return root


# ---------------------------------------------------------------------------
# The workflow at a reduced size
# ---------------------------------------------------------------------------

REDUCED = {  # node type -> {widget position: value}
    "EmptySD3LatentImage": {0: 64, 1: 32},
    "ModelSamplingFlux": {2: 64, 3: 32},
    "KSampler": {2: 1},  # steps (after seed and its control value)
    "DualCLIPLoader": {0: T5_FP8_NAME},
    "OpenSoraSampler": {0: 48, 1: 32, 2: 9, 4: 2},  # width, height, num_frames, steps
}


def reduced_workflow(workflow: dict) -> dict:
    """The UI workflow with the sizes, steps and Flux T5 file of :data:`REDUCED`."""
    workflow = json.loads(json.dumps(workflow))
    for node in workflow["nodes"]:
        for position, value in REDUCED.get(node["type"], {}).items():
            node["widgets_values"][position] = value
    return workflow


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="the smallest FLUX.1-class files ComfyUI accepts")
    parser.add_argument("out", type=Path, help="a models dir written by tiny_v2_files.py --comfy-tokenizers")
    parser.add_argument("--workflow", type=Path, help="also write the reduced text-to-image-to-video workflow here")
    args = parser.parse_args(argv)
    write_models(args.out)
    if args.workflow:
        name = "open_sora_2_text_to_image_to_video.json"
        args.workflow.mkdir(parents=True, exist_ok=True)
        shipped = json.loads((TESTS.parent / "workflows" / name).read_text())
        (args.workflow / name).write_text(json.dumps(reduced_workflow(shipped), indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
