"""Parity handler for the Open-Sora 2.0 Hunyuan VAE cases (``AutoencoderKLCausal3D``).

A case has one ``weights.safetensors`` and independent sub-cases in ``config["tags"]``, each with
its own ``constructor_kwargs`` (the ``tiled`` tag shrinks ``sample_size`` so the official spatial
tiling runs). Per tag, as the case's ``calls`` say:

* ``z, posterior = encode(in.<tag>.x)`` (posterior mean / clamped logvar) with ``rng.<tag>.posterior_noise``
  replayed as the posterior draw (it must be used up);
* ``decoded = decode(out.<tag>.z)`` and ``decoded_extra = decode(in.<tag>.z_extra)``.

mean / logvar / z are compared with ``recommended_tolerance["mean_logvar_z"]``, the decodes with
``["decoded"]``; every ``out.*`` tensor of the case must be produced.
"""

from __future__ import annotations

import torch

from ..checkpoints import load_into
from ..families import build_model
from ..vae.posterior import RecordedNoise
from .runner import Case, Comparison, Handler

CLASSES = ("AutoencoderKLCausal3D",)
ENCODE_OUTPUTS = ("mean", "logvar", "z")
DECODE_OUTPUTS = ("decoded", "decoded_extra")


def _matches(case: Case) -> bool:
    return case.config.get("class") in CLASSES and case.has("io.safetensors") and case.has("weights.safetensors")


def _run(case: Case) -> list[Comparison]:
    comparisons = []
    for tag, spec in case_tags(case).items():
        vae = build_case_model(case, spec.get("constructor_kwargs", case.config["constructor_kwargs"]))
        comparisons.extend(_run_tag(case, vae, tag))
    return comparisons


def case_tags(case: Case) -> dict[str, dict]:
    """Tag -> its entry in config.json (a case without tags is one sub-case named by its io keys)."""
    tags = case.config.get("tags")
    if isinstance(tags, dict):
        return tags
    return {name: {} for name in tags or [""]}


def build_case_model(case: Case, constructor_kwargs: dict):
    """Our ``AutoencoderKLCausal3D`` from official kwargs, loaded strictly (bf16 weights into float32)."""
    vae = build_model(case.config["class"], constructor_kwargs)
    load_into(vae, case.weights, source=str(case.path / "weights.safetensors"))
    return vae.eval()


def _key(tag: str, kind: str, name: str) -> str:
    return f"{kind}.{tag}.{name}" if tag else f"{kind}.{name}"


def _run_tag(case: Case, vae, tag: str) -> list[Comparison]:
    io = case.io
    noise = RecordedNoise({"video": io[_key(tag, "rng", "posterior_noise")]})
    z, posterior = vae.encode(io[_key(tag, "in", "x")], noise=noise, return_posterior=True)
    noise.check_consumed()
    actual = {"mean": posterior.mean, "logvar": posterior.logvar, "z": z}
    sources = {"decoded": _key(tag, "out", "z"), "decoded_extra": _key(tag, "in", "z_extra")}
    for name, source in sources.items():
        if _key(tag, "out", name) in io:
            actual[name] = vae.decode(io[source])
    return [_compare(case, _key(tag, "out", name), value) for name, value in actual.items()]


def _compare(case: Case, key: str, actual: torch.Tensor) -> Comparison:
    group = "decoded" if key.rsplit(".", 1)[-1] in DECODE_OUTPUTS else "mean_logvar_z"
    atol, rtol = case.tolerance(group)
    return Comparison(key, actual, case.io[key], atol, rtol)


HANDLERS = [Handler("v2_vae", _matches, _run)]
