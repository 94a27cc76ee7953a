"""Parity handler for STDiT (v1.0), STDiT2 (v1.1) and STDiT3 (v1.2) forward cases.

A case is recognised from its ``config.json``: ``class`` is one of the three models, it has
``constructor_kwargs`` and a ``call`` of method ``forward``, and no scheduler/sampler description. The
model is built with :func:`opensora_core.families.build_model`, loaded strictly (weights in any float
dtype are copied into float32 parameters), run in eval mode, and every ``out.*`` tensor is compared.

Two call descriptions exist:

- v1.2: ``positional`` (io keys), ``keyword_tensors`` ({argument: io key}), ``keyword_none``
  (arguments passed as None) and ``non_tensor_kwargs``;
- v1.1: ``tensor_inputs`` keyed ``in.<argument>`` plus ``non_tensor_kwargs``, and optionally
  ``second_call``: ``"out.<name> = forward(same inputs, arg=None, ...)"``.
"""

from __future__ import annotations

import ast
import re
from typing import Any

import torch

from ..dtypes import parse_dtype
from ..families import build_model
from .runner import Case, Comparison, Handler

MODEL_CLASSES = ("STDiT3", "STDiT2", "STDiT")
_SECOND_CALL = re.compile(r"^\s*(out\.[\w.]+)\s*=\s*forward\s*\((.*)\)\s*$")


def matches(case: Case) -> bool:
    cfg = case.config
    call = cfg.get("call")
    return (
        cfg.get("class") in MODEL_CLASSES
        and isinstance(cfg.get("constructor_kwargs"), dict)
        and isinstance(call, dict)
        and str(call.get("method", "forward")).startswith("forward")
        and not any(key.startswith(("scheduler", "sampler", "sample_")) for key in cfg)
    )


def run(case: Case) -> list[Comparison]:
    cfg, io = case.config, case.io
    model = build_model(cfg["class"], cfg["constructor_kwargs"])
    model.load_state_dict(case.weights, strict=True)
    model.to(_case_dtype(cfg)).eval()

    args, kwargs = call_arguments(cfg["call"], io)
    outputs: dict[str, torch.Tensor] = {}
    for name, overrides in second_calls(cfg["call"], io):
        outputs[name] = model(*args, **{**kwargs, **overrides})
    main = [k for k in case.outputs() if k not in outputs]
    if len(main) != 1:
        raise ValueError(f"cannot tell which output the main call produces among {main}")
    outputs[main[0]] = model(*args, **kwargs)
    return [Comparison(name, out, io[name], *_tolerance(case, name)) for name, out in outputs.items()]


HANDLERS = [Handler("stdit-forward", matches, run)]


# ==================================================================================================
# Call description
# ==================================================================================================


def call_arguments(call: dict, io: dict[str, torch.Tensor]) -> tuple[list, dict[str, Any]]:
    """Positional and keyword arguments of the main call."""
    if "positional" not in call and "tensor_inputs" not in call and "keyword_tensors" not in call:
        raise ValueError("call description has none of positional / keyword_tensors / tensor_inputs")
    args = [_io_value(io, key) for key in call.get("positional", [])]
    used = set(call.get("positional", []))
    kwargs: dict[str, Any] = {name: _io_value(io, key) for name, key in call.get("keyword_tensors", {}).items()}
    used |= set(call.get("keyword_tensors", {}).values())
    for key in call.get("tensor_inputs", {}):
        if key not in used:
            kwargs[key.removeprefix("in.")] = _io_value(io, key)
    kwargs.update({name: None for name in call.get("keyword_none", [])})
    for name, value in call.get("non_tensor_kwargs", {}).items():
        kwargs[name] = _io_value(io, value) if isinstance(value, str) and value in io else value
    return args, kwargs


def second_calls(call: dict, io: dict[str, torch.Tensor]) -> list[tuple[str, dict[str, Any]]]:
    """Parse ``second_call`` text(s) into (output name, keyword overrides)."""
    texts = call.get("second_call") or []
    texts = [texts] if isinstance(texts, str) else list(texts)
    parsed = []
    for text in texts:
        match = _SECOND_CALL.match(text)
        if match is None:
            raise ValueError(
                f"cannot parse second_call {text!r}; expected 'out.<name> = forward(same inputs, arg=None)'"
            )
        overrides = {}
        for part in (p.strip() for p in match.group(2).split(",")):
            if part == "same inputs" or not part:
                continue
            name, sep, value = (s.strip() for s in part.partition("="))
            if not sep or not name.isidentifier():
                raise ValueError(f"cannot parse argument {part!r} of second_call {text!r}")
            overrides[name] = _io_value(io, value) if value in io else ast.literal_eval(value)
        parsed.append((match.group(1), overrides))
    return parsed


def _io_value(io: dict[str, torch.Tensor], key: str) -> torch.Tensor:
    if key not in io:
        raise ValueError(f"call refers to {key!r}, which io.safetensors does not contain")
    return io[key]


def _case_dtype(cfg: dict) -> torch.dtype:
    dtype = cfg.get("run_mode", {}).get("dtype") or cfg.get("dtype") or "float32"
    return parse_dtype(dtype)


def _tolerance(case: Case, name: str) -> tuple[float, float]:
    """(atol, rtol) for one output: a per-output entry of ``recommended_tolerance`` if present."""
    tol = case.config.get("recommended_tolerance", {})
    for key in (name, name.removeprefix("out.")):
        if isinstance(tol.get(key), dict):
            return case.tolerance(key)
    return case.tolerance()
