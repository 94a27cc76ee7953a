"""Open-Sora 2.0 on the native MODEL: its image condition in the CONDITIONING and its three-pass GUIDER.

* Open-Sora 2.0 Image to Video (native): the Condition node's references encoded as the Open-Sora Sampler
  encodes them (each clip alone, posterior sampled with the seed) and placed as the condition type says;
  the condition (mask + reference latent) goes into positive and negative, where the MODEL reads it as its
  ``cond`` input (KSampler then guides text against the empty prompt, both with the image);
* Open-Sora 2.0 Guider (native): a GUIDER for SamplerCustomAdvanced with the official guidance: per step
  three passes (prompt + image, negative + image, negative alone), text and image scales with oscillation,
  the temporal ramp of the image scale for i2v, and the reference frames written back into item 0 at the
  end (``opensora_core.sampling.v2.combine_passes``, ``conditioning.v2.replace_reference_frames``).
"""

from __future__ import annotations

import functools

import torch

from ..opensora_core.families import by_name
from ..opensora_core.pipeline import place_references
from ..opensora_core.sampling.v2 import GuidanceV2, combine_passes
from ..opensora_core.vae.posterior import gaussian_noise
from . import comfy_bridge as bridge
from . import widgets as w
from .comfy_bridge import NativeAPI, io
from .native_mmdit import CONDITION_KEY, condition_of, put_back_references, step_index, without_condition
from .native_model import family_of_patcher
from .native_nodes import CATEGORY
from .types import LatentInfo, References, ReferencesSocket, VAEHandle, VAESocket

V2 = by_name("opensora-v2.0")
NO_IMAGE = "negative_no_image"  # the guider's third pass: the negative prompt without the image condition


@functools.cache
def guider_class(api: NativeAPI) -> type:
    """Open-Sora 2.0's guider, subclassing ComfyUI's ``CFGGuider`` (built once per ComfyUI API)."""

    class OpenSoraV2Guider(api.CFGGuider):
        def __init__(self, model_patcher, guidance: GuidanceV2):
            super().__init__(model_patcher)
            self.guidance = guidance
            self.condition = None

        def set_conds(self, positive, negative):
            self.condition = condition_of(positive)
            conds = {"positive": positive, "negative": negative}
            if self.condition is not None and not self.condition.is_empty:
                conds[NO_IMAGE] = without_condition(negative)
            self.inner_set_conds(conds)

        def predict_noise(self, x, timestep, model_options={}, seed=None):  # noqa: B006 (ComfyUI's signature)
            names = ["positive", "negative"] + ([NO_IMAGE] if NO_IMAGE in self.conds else [])
            outs = api.calc_cond_batch(self.inner_model, [self.conds[n] for n in names], x, timestep, model_options)
            c, u = outs[0], outs[1]
            u2 = outs[2] if len(outs) > 2 else u  # no image condition: the third pass equals the second
            step, steps = step_index(model_options["transformer_options"]["sample_sigmas"], timestep)
            cond_type = "t2v" if self.condition is None else self.condition.cond_type
            return combine_passes(c, u, u2, self.guidance, step=step, num_steps=steps, cond_type=cond_type)

        def sample(self, *args, **kwargs):
            return put_back_references(super().sample(*args, **kwargs), self.condition)

    return OpenSoraV2Guider


class OpenSoraV2Guider(io.ComfyNode):
    """Open-Sora 2.0's guidance as a GUIDER for SamplerCustomAdvanced: per step the prompt with the image,
    the negative with the image and the negative alone (one batch), combined as u2 + image_cfg (u - u2) +
    cfg (c - u); with oscillation both scales are 1 on odd steps from step 10; for i2v the image scale ramps
    over the frames (1 at the first) and decays over the steps; the reference frame is put back at the end.
    With euler and Open-Sora Sigmas this is the official sampler (t2v: KSampler CFG without oscillation)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        d = V2.defaults
        return io.Schema(
            node_id="OpenSoraV2Guider", display_name="Open-Sora 2.0 Guider (native)", category=CATEGORY,
            description=cls.__doc__,
            inputs=[
                io.Model.Input("model", tooltip="Open-Sora 2.0 native MODEL (after Open-Sora Sampling Settings)."),
                io.Conditioning.Input("positive", tooltip="Open-Sora Text Encode (with the image: 2.0 Image to "
                                      "Video's positive)."),
                io.Conditioning.Input("negative", tooltip="Open-Sora Null Conditioning (the empty prompt)."),
                w.number("cfg", d.cfg_scale, 0.0, 100.0, f"Text guidance (official {d.cfg_scale}).", step=0.1),
                w.number("image_cfg", d.image_cfg_scale, 0.0, 100.0,
                         f"Image guidance (official {d.image_cfg_scale}); no effect without an image.", step=0.1),
                w.boolean("oscillation", d.oscillation, "Both scales 1 on odd steps from step 10 (official)."),
            ],
            outputs=[io.Guider.Output(display_name="guider")],
        )

    @classmethod
    def execute(cls, model, positive, negative, cfg, image_cfg, oscillation) -> io.NodeOutput:
        family = family_of_patcher(model)
        if family.name != V2.name:
            raise ValueError(f"model: {family.title} is not Open-Sora 2.0; use ComfyUI's CFGGuider for it")
        guidance = GuidanceV2(guidance=cfg, guidance_img=image_cfg, text_osci=oscillation, image_osci=oscillation)
        guider = guider_class(bridge.native_api())(model, guidance)
        guider.set_conds(positive, negative)
        guider.set_cfg(cfg)
        return io.NodeOutput(guider)


class OpenSoraV2ImageToVideo(io.ComfyNode):
    """Open-Sora 2.0 image to video on the native MODEL: the references of Open-Sora 2.0 Condition
    (i2v_head, i2v_tail, i2v_loop, v2v) encoded as the Open-Sora Sampler does (seeded posterior sample) and
    placed into the conditioning as the model's condition (mask + reference latent), as the official code
    conditions; the latent stays pure noise. Use the same seed as the noise for the Sampler's video."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="OpenSoraV2ImageToVideo", display_name="Open-Sora 2.0 Image to Video (native)",
            category=CATEGORY, description=cls.__doc__,
            inputs=[
                io.Conditioning.Input("positive", tooltip="Open-Sora Text Encode's conditioning."),
                io.Conditioning.Input("negative", tooltip="Open-Sora Null Conditioning (the empty prompt)."),
                ReferencesSocket.Input("references", tooltip="Open-Sora 2.0 Condition (references)."),
                VAESocket.Input("vae", tooltip="The Hunyuan VAE (encodes the references)."),
                io.Latent.Input("latent", tooltip="Open-Sora Empty Latent Video (gives size and frames)."),
                w.seed(tooltip="Seed of the reference encoding (posterior sample), as the Open-Sora Sampler."),
            ],
            outputs=[io.Conditioning.Output(display_name="positive"), io.Conditioning.Output(display_name="negative")],
        )

    @classmethod
    def execute(cls, positive, negative, references: References, vae: VAEHandle, latent, seed) -> io.NodeOutput:
        info = LatentInfo.of(latent)
        if info is None or info.height is None:
            raise ValueError("latent: connect Open-Sora Empty Latent Video (it records the pixel size and frames)")
        if references.condition_type is None:
            raise ValueError("references: connect Open-Sora 2.0 Condition (it names the condition type), not the "
                             "Mask Builder")
        if vae.geometry != V2.geometry:
            raise ValueError("vae: Open-Sora 2.0 conditions on Hunyuan VAE latents; load hunyuan_vae.safetensors")
        condition = _condition(references, vae, info, latent["samples"], seed)
        return io.NodeOutput(_with(positive, condition), _with(negative, condition))


def _condition(references: References, vae: VAEHandle, info: LatentInfo, samples: torch.Tensor, seed: int):
    """The ConditionV2 (batch 1) of the references for the latent's video."""
    num_frames = info.clip_num_frames[0]
    uses = place_references(V2, [], height=info.height, width=info.width, num_frames=num_frames,
                            reference_frames=references.frame_counts, condition_type=references.condition_type)
    generator = torch.Generator().manual_seed(int(seed))
    with bridge.ComfyPlacement([vae.managed]).use(vae.module):
        refs = V2.conditioning.encode(vae.module, references.frames, [uses], height=info.height, width=info.width,
                                      num_frames=num_frames, noise=gaussian_noise(generator))
    refs = [[r.float().cpu() for r in sample] for sample in refs]
    _, condition = V2.conditioning.insert(torch.zeros_like(samples[:1]).float(), refs, [uses], 0)
    return condition


def _with(conditioning: list, condition) -> list:
    return [[cond, {**extras, CONDITION_KEY: condition}] for cond, extras in conditioning]


NATIVE_V2_NODES: list[type[io.ComfyNode]] = [OpenSoraV2Guider, OpenSoraV2ImageToVideo]
