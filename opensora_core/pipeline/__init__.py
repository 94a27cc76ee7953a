"""The one generation path: prompts, size, references and a mask strategy -> latents -> frames.

The ComfyUI nodes, the ``opensora-generate`` command line and the trainer's validation
samples all run this code. :func:`generate` chains the stages; the nodes call them
one by one (text encoding, sampling and decoding are separate nodes there):

1. :func:`plan_generation` checks every input before any heavy work and fixes the
   per-round prompts and mask-strategy groups (:class:`GenerationPlan`);
2. :func:`encode_prompts` turns each round's prompts into a caption;
3. :func:`encode_conditions` fits reference images/videos to the output size and
   encodes them with the VAE as the family's conditioning wants them (Open-Sora: each reference;
   Open-Sora-Plan: the masked video);
4. :func:`sample_clips` runs the loop rounds: draw noise, insert references, sample;
   from the second round on, the previous clip is decoded and encoded again and its
   last ``condition_frame_length`` latent frames start the new clip (official loop mode);
5. :func:`decode_clips` decodes every clip and joins them, dropping the frames a clip
   shares with the one before.

Randomness comes from one noise source, by default a CPU ``torch.Generator`` seeded with
``spec.seed`` (the same video on every device), drawn in the official order: reference
encodes, then per round the start noise and the sampler's per-step draws.

Modules: :mod:`.plan` (request -> checked plan), :mod:`.stages` (the stage functions),
:mod:`.placement` (devices), :mod:`.generate` (the chains).
"""

from .generate import GenerationResult, SampleResult, generate, sample_video
from .placement import Offload, Placement, StayPut, device_of
from .plan import (
    SEED_RANGE,
    GenerationPlan,
    GenerationSpec,
    check_device_memory,
    check_memory,
    check_vae_fits,
    device_memory_bytes,
    family_options,
    machine_memory_bytes,
    place_references,
    plan_generation,
    video_memory_bytes,
)
from .stages import (
    Clip,
    Components,
    StepInfo,
    TextEncoder,
    check_caption_length,
    decode_clips,
    decode_frames,
    decode_memory_bytes,
    decode_video,
    encode_conditions,
    encode_prompts,
    encode_references,
    encode_video,
    frames_from_video,
    sample_clip,
    sample_clips,
)

__all__ = [
    "SEED_RANGE",
    "Clip",
    "Components",
    "GenerationPlan",
    "GenerationResult",
    "GenerationSpec",
    "Placement",
    "SampleResult",
    "Offload",
    "StayPut",
    "StepInfo",
    "TextEncoder",
    "check_caption_length",
    "check_device_memory",
    "check_memory",
    "check_vae_fits",
    "decode_clips",
    "decode_frames",
    "decode_memory_bytes",
    "decode_video",
    "device_memory_bytes",
    "device_of",
    "encode_conditions",
    "encode_prompts",
    "encode_references",
    "encode_video",
    "family_options",
    "frames_from_video",
    "generate",
    "machine_memory_bytes",
    "place_references",
    "plan_generation",
    "sample_clip",
    "sample_clips",
    "sample_video",
    "video_memory_bytes",
]
