"""Parity handler for the Open-Sora-Plan VAE cases (``CausalVAEModel``, ``WFVAEModel``).

A case builds the official class from ``constructor_kwargs`` and loads ``weights.safetensors`` strictly
into our :class:`~opensora_core.vae.osp.OpenSoraPlanVAE` (``.vae`` is the model). Each tag of
``out.<tag>.<name>`` is replayed from its ``in.<tag>.*`` / ``rng.<tag>.*`` tensors:

=========================  ==========================================================================
``mean`` / ``logvar``      ``vae.encode(in.video)`` posterior (untiled)
``sample``                 ``mean + std * rng.posterior_noise`` (the recorded draw injected)
``latent_diffusion``       the wrapper's ``(sample - shift) * scale``
``recon_from_mean``        ``vae.decode(mean)``
``dec``                    ``vae.decode(in.z)``
``wrapper_decode_btchw``   the wrapper's decode of ``in.latent_diffusion``, as (B, T, C, H, W)
``dec_tiled``              CausalVAE: the official tiling with the class defaults of the case's release
                           and ``inputs.<tag>.tile_attrs_set_before_enable_tiling``; WF-VAE: our exact
                           chunked decode (the official tiling is wrong for some lengths)
=========================  ==========================================================================

``dbg.<tag>.<module>`` tensors are compared with the output of that module (forward hooks) during the
tag's encode (``encoder.*``) or decode (``decoder.*``); ``encoder.input_coeffs`` is the encoder's
input. Tolerances: ``recommended_tolerance["out.*"]`` and ``["dbg.*"]``.
"""

from __future__ import annotations

import logging

from torch import Tensor, nn

from ..vae.causal_vae import CausalVAETiling
from ..vae.osp import OpenSoraPlanVAE, WFVAEChunking, to_official_btchw
from ..vae.wfvae import WFVAEModel
from .runner import Case, Comparison, Handler

log = logging.getLogger("opensora")

CLASSES = ("CausalVAEModel", "WFVAEModel")
ENCODE_OUTPUTS = ("mean", "logvar", "sample", "latent_diffusion", "recon_from_mean")
DECODE_OUTPUTS = ("dec", "dec_tiled", "wrapper_decode_btchw")


def _matches(case: Case) -> bool:
    return case.config.get("class") in CLASSES and case.has("io.safetensors") and case.has("weights.safetensors")


def build_case_vae(case: Case) -> OpenSoraPlanVAE:
    """The case's model (float32, CPU) in the official wrapper, weights loaded with ``strict=True``."""
    wrapper = OpenSoraPlanVAE.from_official_config(case.config["class"], case.config["constructor_kwargs"])
    wrapper.vae.load_state_dict(case.weights, strict=True)
    return wrapper.eval()


def _run(case: Case) -> list[Comparison]:
    wrapper = build_case_vae(case)
    comparisons: list[Comparison] = []
    for tag in sorted({key.split(".")[1] for key in case.outputs()}):
        with _DebugRecorder(case, wrapper.vae, tag) as debug:
            comparisons += _encode_tag(case, wrapper, tag) + _decode_tag(case, wrapper, tag)
        comparisons += debug.comparisons()
    return comparisons


def _names(case: Case, tag: str) -> list[str]:
    names = [key.split(".", 2)[2] for key in case.outputs() if key.split(".")[1] == tag]
    unknown = sorted(set(names) - set(ENCODE_OUTPUTS) - set(DECODE_OUTPUTS))
    if unknown:
        raise ValueError(f"cannot tell what computes out.{tag}.{unknown[0]}")
    return names


def _out(case: Case, tag: str, name: str, actual: Tensor) -> Comparison:
    key = f"out.{tag}.{name}"
    return Comparison(key, actual, case.io[key], *case.tolerance("out.*"))


def _encode_tag(case: Case, wrapper: OpenSoraPlanVAE, tag: str) -> list[Comparison]:
    names = [n for n in _names(case, tag) if n in ENCODE_OUTPUTS]
    if not names:
        return []
    posterior = wrapper.vae.encode(case.io[f"in.{tag}.video"])
    sample = posterior.sample(case.io[f"rng.{tag}.posterior_noise"])
    values = {"mean": lambda: posterior.mean, "logvar": lambda: posterior.logvar, "sample": lambda: sample,
              "latent_diffusion": lambda: wrapper.to_diffusion(sample),
              "recon_from_mean": lambda: wrapper.vae.decode(posterior.mean)}
    return [_out(case, tag, name, values[name]()) for name in names]


def _decode_tag(case: Case, wrapper: OpenSoraPlanVAE, tag: str) -> list[Comparison]:
    comparisons = []
    for name in (n for n in _names(case, tag) if n in DECODE_OUTPUTS):
        if name == "dec":
            actual = wrapper.vae.decode(case.io[f"in.{tag}.z"])
        elif name == "wrapper_decode_btchw":
            actual = to_official_btchw(wrapper.decode(case.io[f"in.{tag}.latent_diffusion"]))
        else:
            actual = wrapper.decode_vae_latent(case.io[f"in.{tag}.z"], tiling=_tiling(case, wrapper, tag))
        comparisons.append(_out(case, tag, name, actual))
    return comparisons


def _tiling(case: Case, wrapper: OpenSoraPlanVAE, tag: str) -> CausalVAETiling | WFVAEChunking:
    if isinstance(wrapper.vae, WFVAEModel):
        return WFVAEChunking()
    version = ".".join(case.config["source"]["tag"].lstrip("v").split(".")[:2])  # "v1.2.0" -> "1.2"
    attrs = case.config.get("inputs", {}).get(tag, {}).get("tile_attrs_set_before_enable_tiling", {})
    return CausalVAETiling.for_version(f"v{version}", **attrs)


# ==================================================================================================
# dbg.* tensors through forward hooks
# ==================================================================================================


class _DebugRecorder:
    """Hooks the modules named by ``dbg.<tag>.*`` while a tag runs and keeps every output they give.

    A tag runs its module several times (encode, decode of ``in.z``, the wrapper's decode, ...), and
    the reference recorded one of those calls; each ``dbg`` tensor is compared with the same-shaped
    recorded output closest to it. Names that are no module of ours are skipped (logged).
    """

    def __init__(self, case: Case, model: nn.Module, tag: str):
        self.case, self.model, self.prefix = case, model, f"dbg.{tag}."
        self.keys = sorted(k for k in case.io if k.startswith(self.prefix))
        self.seen: dict[str, list[Tensor]] = {key: [] for key in self.keys}
        self.handles: list = []

    def __enter__(self) -> _DebugRecorder:
        for key in self.keys:
            path = key[len(self.prefix):]
            if path == "encoder.input_coeffs":
                self.handles.append(self.model.encoder.register_forward_pre_hook(
                    lambda m, args, k=key: self._keep(k, args[0])))
                continue
            try:
                module = self.model.get_submodule(path)
            except AttributeError:
                log.debug("parity: %s names no module of ours; not compared", key)
                continue
            self.handles.append(module.register_forward_hook(lambda m, args, out, k=key: self._keep(k, out)))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self.handles:
            handle.remove()

    def _keep(self, key: str, value: Tensor) -> None:
        expected = self.case.io[key]
        if value.ndim == 4 and expected.ndim == 5 and value.shape[0] == expected.shape[0] * expected.shape[2]:
            b, _, t = expected.shape[:3]  # a 2D layer we run on (B*T) frames
            value = value.reshape(b, t, *value.shape[1:]).transpose(1, 2)
        self.seen[key].append(value.detach().clone())

    def comparisons(self) -> list[Comparison]:
        result = []
        for key, values in self.seen.items():
            expected = self.case.io[key]
            same_shape = [v for v in values if v.shape == expected.shape] or values
            if same_shape:
                best = min(same_shape, key=lambda v: _distance(v, expected))
                result.append(Comparison(key, best, expected, *self.case.tolerance("dbg.*")))
        return result


def _distance(value: Tensor, expected: Tensor) -> float:
    if value.shape != expected.shape:
        return float("inf")
    return float((value.double() - expected.double()).abs().max())


HANDLERS = [Handler("osp_vae", _matches, _run)]
