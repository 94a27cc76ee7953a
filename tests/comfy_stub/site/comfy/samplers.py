"""Test stand-in for ``comfy.samplers``: the path KSampler and SamplerCustomAdvanced take, Euler only.

Our own reduced implementation of ComfyUI v0.3.64's documented sampling path, enough to drive a
native MODEL through the same hooks: each conditioning is turned into model conds by the model's
``extra_conds`` (``encode_model_conds``), prompt and negative run as one batch through
``apply_model``, CFG mixes the denoised estimates (or the model options' ``sampler_cfg_function``),
and ``KSamplerX0Inpaint`` applies a LATENT's ``noise_mask`` with the model options'
``denoise_mask_function`` and the model's ``scale_latent_inpaint``. One conditioning entry per side,
no areas, hooks or ControlNets.
"""

from __future__ import annotations

import math

import torch


def convert_cond(cond):
    return [{**extras, "cross_attn": tensor, "model_conds": {}} for tensor, extras in cond]


def encode_model_conds(model_function, conds, noise, device, prompt_type, **kwargs):
    out = []
    for entry in conds:
        params = {**entry, "device": device, "noise": noise, "prompt_type": prompt_type}
        for key, value in kwargs.items():
            params.setdefault(key, value)
        out.append({**entry, "model_conds": {**entry["model_conds"], **model_function(**params)}})
    return out


def calc_cond_batch(model, conds, x, timestep, model_options):
    sigma = timestep
    entries = [c[0] for c in conds]
    if any(len(c) != 1 for c in conds):
        raise NotImplementedError("the stand-in samples one conditioning entry per side")
    per_entry = [{k: v.process_cond(batch_size=x.shape[0]) for k, v in e["model_conds"].items()} for e in entries]
    merged = {k: per_entry[0][k].concat([p[k] for p in per_entry[1:]]) for k in per_entry[0]}
    n = len(entries)
    options = dict(model_options.get("transformer_options", {}))
    out = model.apply_model(torch.cat([x] * n), torch.cat([sigma] * n), transformer_options=options, **merged)
    return list(out.chunk(n))


def cfg_function(model, cond_pred, uncond_pred, cond_scale, x, sigma, model_options):
    custom = model_options.get("sampler_cfg_function")
    if custom is not None:
        args = {"cond": x - cond_pred, "uncond": x - uncond_pred, "cond_scale": cond_scale, "input": x, "sigma": sigma,
                "cond_denoised": cond_pred, "uncond_denoised": uncond_pred, "model": model}
        return x - custom(args)
    return uncond_pred + (cond_pred - uncond_pred) * cond_scale


class CFGGuider:
    """A GUIDER, as ComfyUI's: ``inner_set_conds`` keeps conditionings by name, ``sample`` turns each into
    model conds (``self.conds``) and calls the sampler with itself as the model (``__call__`` ->
    ``predict_noise``, which a subclass may replace: Open-Sora 2.0's three-pass guider)."""

    def __init__(self, model_patcher):
        self.model_patcher = model_patcher
        self.model_options = model_patcher.model_options
        self.original_conds = {}
        self.cfg = 1.0

    def set_conds(self, positive, negative):
        self.inner_set_conds({"positive": positive, "negative": negative})

    def set_cfg(self, cfg):
        self.cfg = cfg

    def inner_set_conds(self, conds):
        for k in conds:
            self.original_conds[k] = convert_cond(conds[k])

    def __call__(self, x, timestep, model_options={}, seed=None):
        return self.predict_noise(x, timestep, model_options, seed)

    def predict_noise(self, x, timestep, model_options={}, seed=None):
        cond, uncond = calc_cond_batch(self.inner_model, [self.conds["positive"], self.conds["negative"]], x,
                                       timestep, model_options)
        return cfg_function(self.inner_model, cond, uncond, self.cfg, x, timestep, model_options)

    def sample(self, noise, latent_image, sampler, sigmas, denoise_mask=None, callback=None, disable_pbar=False,
               seed=None):
        with self.model_patcher.patched() as model:
            self.inner_model = model
            if torch.count_nonzero(latent_image) > 0:
                latent_image = model.process_latent_in(latent_image)
            if denoise_mask is not None:
                denoise_mask = reshape_mask(denoise_mask, noise.shape)
            self.conds = {k: encode_model_conds(model.extra_conds, v, noise, noise.device, k,
                                                latent_image=latent_image, denoise_mask=denoise_mask, seed=seed)
                          for k, v in self.original_conds.items()}
            options = {**self.model_options, "transformer_options": {
                **self.model_options.get("transformer_options", {}), "sample_sigmas": sigmas}}
            samples = sampler.sample(self, sigmas, options, callback, noise, latent_image, denoise_mask)
            return model.process_latent_out(samples.float())


def reshape_mask(mask, shape):
    """A (B, 1, T, h|1, w|1) mask stretched to the latent (B, C, T, h, w), as comfy.utils.reshape_mask."""
    mask = torch.nn.functional.interpolate(mask.float(), size=shape[2:], mode="trilinear")
    return mask.expand(shape[0] if mask.shape[0] == 1 else mask.shape[0], shape[1], *shape[2:])


class KSamplerX0Inpaint:
    def __init__(self, model, sigmas):
        self.inner_model = model
        self.sigmas = sigmas

    def __call__(self, x, sigma, denoise_mask, model_options={}, seed=None):
        if denoise_mask is not None:
            if "denoise_mask_function" in model_options:
                denoise_mask = model_options["denoise_mask_function"](
                    sigma, denoise_mask, extra_options={"model": self.inner_model, "sigmas": self.sigmas})
            latent_mask = 1.0 - denoise_mask
            kept = self.inner_model.inner_model.scale_latent_inpaint(x=x, sigma=sigma, noise=self.noise,
                                                                     latent_image=self.latent_image)
            x = x * denoise_mask + kept * latent_mask
        out = self.inner_model(x, sigma, model_options=model_options, seed=seed)
        if denoise_mask is not None:
            out = out * denoise_mask + self.latent_image * latent_mask
        return out


class KSAMPLER:
    """Euler (k-diffusion ``sample_euler`` without churn)."""

    def sample(self, guider, sigmas, model_options, callback, noise, latent_image, denoise_mask):
        model_k = KSamplerX0Inpaint(guider, sigmas)
        model_k.latent_image, model_k.noise = latent_image, noise
        sampling = guider.inner_model.model_sampling
        max_denoise = math.isclose(float(sampling.sigma_max), float(sigmas[0]), rel_tol=1e-5) or sigmas[0] > sampling.sigma_max
        x = sampling.noise_scaling(sigmas[0], noise, latent_image, max_denoise)
        for i in range(len(sigmas) - 1):
            sigma = sigmas[i] * x.new_ones(x.shape[0])
            denoised = model_k(x, sigma, denoise_mask, model_options)
            if callback is not None:
                callback(i, denoised, x, len(sigmas) - 1)
            x = x + (x - denoised) / sigmas[i] * (sigmas[i + 1] - sigmas[i])
        return sampling.inverse_noise_scaling(sigmas[-1], x)


def ksampler(name):
    if name != "euler":
        raise NotImplementedError(f"the stand-in samples with euler only, not {name!r}")
    return KSAMPLER()


def simple_scheduler(model_sampling, steps):
    stride = len(model_sampling.sigmas) / steps
    sigmas = [float(model_sampling.sigmas[-(1 + int(i * stride))]) for i in range(steps)]
    return torch.FloatTensor(sigmas + [0.0])
