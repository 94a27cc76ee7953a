"""Parity handler for the VAE reference cases (``VideoAutoencoderKL`` and ``VideoAutoencoderPipeline``).

Everything comes from the case's ``config.json``:

* ``class`` and ``constructor_kwargs`` build the official model; the AutoencoderKL
  architecture comes from ``spatial_autoencoderkl_config`` / ``inner_autoencoder_config``
  when the case gives one;
* the calls: a list of ``{"call": "encode(in.x)" | "decode(out.z, num_frames=N)",
  "output": ..., "noise": [rng keys]}`` (v1.2 format), or, when ``calls`` is a
  description dict (v1.1 format), the output names: ``out.z_sample`` = sampled encode
  with every ``rng.*`` draw, ``out.z_mean`` / ``out.z_mode`` = encode with the
  posterior means, ``out.decode_of_<name>`` = decode of ``out.<name>``;
* an encode with recorded noise replays the ``rng.*`` tensors through
  :class:`~opensora_core.vae.posterior.RecordedNoise` (a key naming ``temporal`` feeds
  the temporal stage, any other the spatial stage) and fails unless every draw is used;
* latents are compared with ``recommended_tolerance["z"]``, videos with ``["x"]``
  (or the top-level tolerance).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from ..checkpoints import load_into
from ..vae import vae_class
from ..vae.posterior import STAGE_AXIS, RecordedNoise
from .runner import Case, Comparison, Handler

CLASSES = ("VideoAutoencoderPipeline", "VideoAutoencoderKL")
_CALL = re.compile(r"^\s*(encode|decode)\(\s*([\w.]+)\s*(?:,\s*num_frames\s*=\s*(\d+))?\s*\)")
_AUTOENCODER_CONFIG_KEYS = ("spatial_autoencoderkl_config", "inner_autoencoder_config")


@dataclass
class VaeCall:
    kind: str  # "encode" | "decode"
    source: str  # io key of the input
    output: str  # io key of the expected output
    num_frames: int | None = None
    noise: tuple[str, ...] | None = None  # rng keys for a sampled encode; None = posterior means


def _matches(case: Case) -> bool:
    return case.config.get("class") in CLASSES and case.has("io.safetensors") and case.has("weights.safetensors")


def _run(case: Case) -> list[Comparison]:
    vae = build_case_model(case)
    comparisons = []
    for call in case_calls(case):
        actual = _execute(vae, call, case.io)
        atol, rtol = case.tolerance("z" if call.kind == "encode" else "x")
        comparisons.append(Comparison(call.output, actual, case.io[call.output], atol, rtol))
    return comparisons


def build_case_model(case: Case):
    """The case's official class from its constructor kwargs, loaded strictly from ``weights.safetensors``."""
    config = case.config
    autoencoder = next((config[k] for k in _AUTOENCODER_CONFIG_KEYS if k in config), None)
    cls = vae_class(config["class"])
    vae = cls.from_official_config(config["constructor_kwargs"], autoencoder_config=autoencoder)
    weights = case.weights
    target = vae
    if config["class"] == "VideoAutoencoderKL" and not any(k.startswith("module.") for k in weights):
        target = vae.module  # the case stores the inner AutoencoderKL without the wrapper's prefix
    load_into(target, weights, source=str(case.path / "weights.safetensors"))
    return vae.eval()


def case_calls(case: Case) -> list[VaeCall]:
    calls = case.config.get("calls")
    if isinstance(calls, list):
        return [_parse_call(c) for c in calls]
    return [_call_from_output_name(name, case) for name in case.outputs()]


def _parse_call(entry: dict) -> VaeCall:
    match = _CALL.match(entry["call"])
    if match is None:
        raise ValueError(f"cannot read VAE call {entry['call']!r}")
    kind, source, frames = match.groups()
    noise = tuple(entry["noise"]) if entry.get("noise") else None
    return VaeCall(kind, source, entry["output"], int(frames) if frames else None, noise)


def _call_from_output_name(name: str, case: Case) -> VaeCall:
    stem = name.removeprefix("out.")
    if stem.startswith("decode_of_"):
        return VaeCall("decode", "out." + stem.removeprefix("decode_of_"), name)
    if stem.endswith(("_mean", "_mode")):
        return VaeCall("encode", "in.x", name)
    if stem.endswith("_sample"):
        return VaeCall("encode", "in.x", name, noise=tuple(sorted(k for k in case.io if k.startswith("rng."))))
    raise ValueError(f"cannot tell what computes {name!r}")


def _execute(vae, call: VaeCall, io: dict[str, torch.Tensor]) -> torch.Tensor:
    value = io[call.source]
    if call.kind == "decode":
        return vae.decode(value, call.num_frames or value.shape[2])
    if call.noise is None:
        return vae.encode(value, sample=False)
    noise = recorded_noise({k: io[k] for k in call.noise})
    z = vae.encode(value, sample=True, noise=noise)
    noise.check_consumed()
    return z


def recorded_noise(draws: dict[str, torch.Tensor]) -> RecordedNoise:
    """Group ``rng.*`` tensors by stage (names with ``temporal`` -> temporal) and join each stage's draws in order."""
    stages: dict[str, list[torch.Tensor]] = {}
    for key in sorted(draws):
        stage = "temporal" if "temporal" in key else "spatial"
        stages.setdefault(stage, []).append(draws[key])
    return RecordedNoise({s: torch.cat(t, dim=STAGE_AXIS[s]) for s, t in stages.items()})


HANDLERS = [Handler("vae", _matches, _run)]
