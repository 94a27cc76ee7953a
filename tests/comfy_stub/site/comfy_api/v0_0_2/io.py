"""Test stand-in for ComfyUI's V3 node schema (``comfy_api.v0_0_2.io``): the part the pack uses.

Our own small implementation of the documented behaviour of ComfyUI v0.3.64
(comfy_api/latest/_io.py): a node class declares a :class:`Schema` in ``define_schema`` and
runs in the classmethod ``execute``; ComfyUI reads the V1 view of it (``INPUT_TYPES()``,
``RETURN_TYPES``, ``FUNCTION`` = ``EXECUTE_NORMALIZED``...), in which a combo is
``("COMBO", {"options": [...], ...})`` and an input's ``optional`` flag becomes the section.
Hidden values (``PROMPT``, ``EXTRA_PNGINFO``) reach ``execute`` as ``cls.hidden`` on a per-call
clone of the class (``PREPARE_CLASS_CLONE``); an output node gets both automatically.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any


class _ClassProperty:
    def __init__(self, getter):
        self.getter = getter

    def __get__(self, instance, owner):
        return self.getter(owner)


def _pruned(d: dict) -> dict:
    return {k: v for k, v in d.items() if v is not None}


# ---------------------------------------------------------------------------
# Inputs and outputs
# ---------------------------------------------------------------------------


class Input:
    io_type = "*"

    def __init__(self, id: str, display_name: str | None = None, optional: bool = False, tooltip: str | None = None,
                 lazy: bool | None = None, **options):
        self.id, self.display_name, self.optional, self.tooltip, self.lazy = id, display_name, optional, tooltip, lazy
        self.options = options

    def as_dict(self) -> dict:
        return _pruned({"display_name": self.display_name, "tooltip": self.tooltip, "lazy": self.lazy})

    def v1(self) -> tuple:
        return (self.io_type, self.as_dict())


class WidgetInput(Input):
    KEYS: tuple[str, ...] = ()  # constructor options that appear in the V1 dict (name -> same name)
    RENAMED: dict[str, str] = {"force_input": "forceInput", "display_mode": "display", "dynamic_prompts": "dynamicPrompts"}

    def __init__(self, id: str, display_name=None, optional=False, tooltip=None, lazy=None, default=None, **options):
        super().__init__(id, display_name, optional, tooltip, lazy)
        unknown = set(options) - set(self.KEYS) - set(self.RENAMED)
        if unknown:
            raise TypeError(f"{type(self).__qualname__} got unexpected options {sorted(unknown)}")
        self.default = default
        self.options = options

    def as_dict(self) -> dict:
        extra = {self.RENAMED.get(k, k): (v.value if isinstance(v, enum.Enum) else v) for k, v in self.options.items()}
        return super().as_dict() | _pruned({"default": self.default, **extra})


class Output:
    io_type = "*"

    def __init__(self, id: str | None = None, display_name: str | None = None, tooltip: str | None = None,
                 is_output_list: bool = False):
        self.id, self.display_name, self.tooltip, self.is_output_list = id, display_name, tooltip, is_output_list


def _socket(io_type: str, name: str):
    """A socket type: ``T.Input(id, ...)`` / ``T.Output(...)``, as ComfyUI's ``comfytype``."""
    input_cls = type("Input", (Input,), {"io_type": io_type})
    output_cls = type("Output", (Output,), {"io_type": io_type})
    return type(name, (), {"io_type": io_type, "Input": input_cls, "Output": output_cls})


def Custom(io_type: str):  # noqa: N802 (ComfyUI's spelling)
    return _socket(io_type, "CustomComfyType")


class NumberDisplay(str, enum.Enum):
    number = "number"
    slider = "slider"


class _IntInput(WidgetInput):
    io_type = "INT"
    KEYS = ("min", "max", "step", "control_after_generate", "display_mode", "socketless", "force_input")


class _FloatInput(WidgetInput):
    io_type = "FLOAT"
    KEYS = ("min", "max", "step", "round", "display_mode", "socketless", "force_input")


class _StringInput(WidgetInput):
    io_type = "STRING"
    KEYS = ("multiline", "placeholder", "dynamic_prompts", "socketless", "force_input")

    def __init__(self, id, display_name=None, optional=False, tooltip=None, lazy=None, multiline=False, **options):
        super().__init__(id, display_name, optional, tooltip, lazy, multiline=multiline, **options)


class _BooleanInput(WidgetInput):
    io_type = "BOOLEAN"
    KEYS = ("label_on", "label_off", "socketless", "force_input")


class _ComboInput(WidgetInput):
    io_type = "COMBO"
    KEYS = ("control_after_generate", "socketless")

    def __init__(self, id, options=None, display_name=None, optional=False, tooltip=None, lazy=None, default=None,
                 **more):
        super().__init__(id, display_name, optional, tooltip, lazy, default, **more)
        self.choices = list(options or [])

    def as_dict(self) -> dict:
        return super().as_dict() | {"multiselect": False, "options": list(self.choices)}


def _widget(io_type: str, name: str, input_cls):
    socket = _socket(io_type, name)
    socket.Input = input_cls
    return socket


Int = _widget("INT", "Int", _IntInput)
Float = _widget("FLOAT", "Float", _FloatInput)
String = _widget("STRING", "String", _StringInput)
Boolean = _widget("BOOLEAN", "Boolean", _BooleanInput)
Combo = _widget("COMBO", "Combo", _ComboInput)
Image = _socket("IMAGE", "Image")
Mask = _socket("MASK", "Mask")
Latent = _socket("LATENT", "Latent")
Conditioning = _socket("CONDITIONING", "Conditioning")
Clip = _socket("CLIP", "Clip")
Vae = _socket("VAE", "Vae")
Model = _socket("MODEL", "Model")
Sigmas = _socket("SIGMAS", "Sigmas")
Sampler = _socket("SAMPLER", "Sampler")
Noise = _socket("NOISE", "Noise")
Guider = _socket("GUIDER", "Guider")
Video = _socket("VIDEO", "Video")


# ---------------------------------------------------------------------------
# Hidden values, schema, node base class, output
# ---------------------------------------------------------------------------


class Hidden(str, enum.Enum):
    unique_id = "UNIQUE_ID"
    prompt = "PROMPT"
    extra_pnginfo = "EXTRA_PNGINFO"
    dynprompt = "DYNPROMPT"


class HiddenHolder:
    def __init__(self, values: dict | None = None):
        values = values or {}
        self.unique_id = values.get(Hidden.unique_id)
        self.prompt = values.get(Hidden.prompt)
        self.extra_pnginfo = values.get(Hidden.extra_pnginfo)
        self.dynprompt = values.get(Hidden.dynprompt)


@dataclass
class Schema:
    node_id: str
    display_name: str | None = None
    category: str = "sd"
    inputs: list[Input] = field(default_factory=list)
    outputs: list[Output] = field(default_factory=list)
    hidden: list[Hidden] = field(default_factory=list)
    description: str = ""
    is_input_list: bool = False
    is_output_node: bool = False
    is_deprecated: bool = False
    is_experimental: bool = False
    not_idempotent: bool = False

    def finalize(self) -> Schema:
        ids = [i.id for i in self.inputs]
        if len(set(ids)) != len(ids):
            raise ValueError(f"{self.node_id}: input ids must be unique, got {ids}")
        if self.is_output_node:
            self.hidden = list(self.hidden) + [h for h in (Hidden.prompt, Hidden.extra_pnginfo) if h not in self.hidden]
        for i, output in enumerate(self.outputs):
            if output.id is None:
                output.id = f"_{i}_{output.io_type}_"
        return self

    def v1_inputs(self) -> dict:
        sections: dict[str, dict] = {"required": {}}
        for item in self.inputs:
            sections.setdefault("optional" if item.optional else "required", {})[item.id] = item.v1()
        if self.hidden:
            sections["hidden"] = {h.name: (h.value,) for h in self.hidden}
        return sections


class NodeOutput:
    def __init__(self, *args: Any, ui: dict | None = None, expand: dict | None = None, block_execution: str | None = None):
        self.args, self.ui, self.expand, self.block_execution = args, ui, expand, block_execution

    @property
    def result(self):
        return self.args if self.args else None

    def __getitem__(self, index):
        return self.args[index]


class ComfyNode:
    """Base class of a V3 node: ``define_schema`` and ``execute`` are classmethods of the subclass."""

    hidden: HiddenHolder | None = None

    @classmethod
    def define_schema(cls) -> Schema:
        raise NotImplementedError

    @classmethod
    def execute(cls, **kwargs) -> NodeOutput:
        raise NotImplementedError

    @classmethod
    def validate_inputs(cls, **kwargs) -> bool | str:
        raise NotImplementedError

    # --- the V1 view ComfyUI's server and executor read ---------------------------------------

    @classmethod
    def GET_SCHEMA(cls) -> Schema:  # noqa: N802
        return cls.define_schema().finalize()

    @classmethod
    def INPUT_TYPES(cls, include_hidden: bool = True) -> dict:  # noqa: N802
        sections = cls.GET_SCHEMA().v1_inputs()
        if not include_hidden:
            sections.pop("hidden", None)
        return sections

    RETURN_TYPES = _ClassProperty(lambda cls: [o.io_type for o in cls.GET_SCHEMA().outputs])
    RETURN_NAMES = _ClassProperty(lambda cls: [o.display_name or o.io_type for o in cls.GET_SCHEMA().outputs])
    OUTPUT_TOOLTIPS = _ClassProperty(lambda cls: [o.tooltip for o in cls.GET_SCHEMA().outputs])
    OUTPUT_IS_LIST = _ClassProperty(lambda cls: [o.is_output_list for o in cls.GET_SCHEMA().outputs])
    DESCRIPTION = _ClassProperty(lambda cls: cls.GET_SCHEMA().description)
    CATEGORY = _ClassProperty(lambda cls: cls.GET_SCHEMA().category)
    OUTPUT_NODE = _ClassProperty(lambda cls: cls.GET_SCHEMA().is_output_node)
    FUNCTION = "EXECUTE_NORMALIZED"

    @classmethod
    def PREPARE_CLASS_CLONE(cls, hidden_inputs: dict | None) -> type:  # noqa: N802
        clone = type(cls.__name__, (cls,), {})
        clone.hidden = HiddenHolder(hidden_inputs)
        return clone

    @classmethod
    def EXECUTE_NORMALIZED(cls, *args, **kwargs) -> NodeOutput:  # noqa: N802
        result = cls.execute(*args, **kwargs)
        if result is None:
            return NodeOutput()
        if isinstance(result, tuple):
            return NodeOutput(*result)
        if not isinstance(result, NodeOutput):
            raise TypeError(f"{cls.__name__}.execute returned {type(result).__name__}, not a NodeOutput")
        return result
