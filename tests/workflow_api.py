"""UI-format workflow (what the ComfyUI frontend saves) -> API prompt, checks and a small executor, for tests.

Our own converter, driven by the node classes' ``INPUT_TYPES`` (a V3 node's V1 view, as ComfyUI's server
publishes it) the way the frontend 1.27 builds a prompt:

* widgets are the INT / FLOAT / STRING / BOOLEAN / combo inputs (required, then optional) in
  definition order; ``widgets_values`` is positional over them (a combo is a list of options in V1
  and ``("COMBO", {"options": [...]})`` in V3);
* an INT input with ``control_after_generate`` (or named ``seed``) is followed by one extra value
  (fixed / increment / decrement / randomize) that is not sent;
* a combo with ``image_upload`` / ``video_upload`` adds an upload-button value after all widgets;
* a link into an input replaces the widget value of the same name (a widget converted to an input);
* ``Note`` / ``MarkdownNote`` and muted nodes (mode 2) are dropped.

:func:`execute` runs an API prompt like ComfyUI's executor: dependencies first, constants
checked against min/max/combo options and ``VALIDATE_INPUTS`` (V3: an overridden ``validate_inputs``),
hidden ``PROMPT`` / ``EXTRA_PNGINFO`` inputs filled (V3: on a class clone, ``cls.hidden``), ``{"ui": ...}``
results collected.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

FRONTEND_ONLY = ("Note", "MarkdownNote")
MUTED = 2
WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN")
CONTROL_VALUES = ("fixed", "increment", "decrement", "randomize")
UPLOAD_FLAGS = ("image_upload", "video_upload")


class WorkflowError(ValueError):
    """A workflow that the frontend or the server would reject."""


@dataclass(frozen=True)
class Widget:
    name: str
    kind: str  # "value", "control" (after a seed) or "upload" (button after all widgets)
    spec: tuple = ()


def _inputs(cls) -> list[tuple[str, str, tuple]]:
    spec = cls.INPUT_TYPES()
    return [(section, name, s) for section in ("required", "optional") for name, s in spec.get(section, {}).items()]


def _options(spec: tuple) -> dict:
    return spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}


def combo_options(spec: tuple) -> list | None:
    """The options of a combo input (V1: the list itself; V3: ``("COMBO", {"options": [...]})``), else None."""
    if isinstance(spec[0], list):
        return spec[0]
    if spec[0] == "COMBO":
        return list(_options(spec).get("options", []))
    return None


def is_widget(spec: tuple) -> bool:
    return (combo_options(spec) is not None or spec[0] in WIDGET_TYPES) and not _options(spec).get("forceInput")


def is_v3(cls) -> bool:
    return hasattr(cls, "GET_SCHEMA")


def widget_layout(cls) -> list[Widget]:
    """The frontend's widget order for a node class."""
    widgets, uploads = [], []
    for _, name, spec in _inputs(cls):
        if not is_widget(spec):
            continue
        widgets.append(Widget(name, "value", spec))
        options = _options(spec)
        if spec[0] == "INT" and options.get("control_after_generate", name in ("seed", "noise_seed")):
            widgets.append(Widget(name, "control"))
        if combo_options(spec) is not None and any(options.get(flag) for flag in UPLOAD_FLAGS):
            uploads.append(Widget(name, "upload"))
    return widgets + uploads


def input_type(cls, name: str) -> str:
    for _, input_name, spec in _inputs(cls):
        if input_name == name:
            return "COMBO" if combo_options(spec) is not None else spec[0]
    raise WorkflowError(f"{cls.__name__} has no input {name!r}")


def _links(workflow: dict) -> dict[int, tuple[int, int, int, int, str]]:
    """link id -> (origin node, origin slot, target node, target slot, type); array or object form."""
    out = {}
    for link in workflow["links"]:
        if isinstance(link, dict):
            link = [link["id"], link["origin_id"], link["origin_slot"], link["target_id"], link["target_slot"], link["type"]]
        out[link[0]] = tuple(link[1:])
    return out


def _live_nodes(workflow: dict) -> list[dict]:
    return [n for n in workflow["nodes"] if n["type"] not in FRONTEND_ONLY and n.get("mode", 0) != MUTED]


# ---------------------------------------------------------------------------
# UI -> API
# ---------------------------------------------------------------------------


def to_api(workflow: dict, defs: dict[str, type]) -> dict[str, dict]:
    """The API prompt ``{node id: {"class_type", "inputs"}}`` of a UI workflow."""
    links = _links(workflow)
    prompt = {}
    for node in _live_nodes(workflow):
        cls = defs.get(node["type"])
        if cls is None:
            raise WorkflowError(f"node {node['id']}: unknown node type {node['type']!r} (a missing node)")
        layout, values = widget_layout(cls), node.get("widgets_values", [])
        if len(layout) != len(values):
            raise WorkflowError(
                f"node {node['id']} ({node['type']}): {len(values)} widget values for {len(layout)} widgets "
                f"({[w.name if w.kind == 'value' else w.kind for w in layout]})"
            )
        inputs = {}
        for widget, value in zip(layout, values):
            if widget.kind == "control" and value not in CONTROL_VALUES:
                raise WorkflowError(f"node {node['id']}: control_after_generate {value!r} not in {CONTROL_VALUES}")
            if widget.kind == "value":
                inputs[widget.name] = value
        for slot in node.get("inputs", []):
            if slot.get("link") is not None:
                origin, origin_slot, *_ = links[slot["link"]]
                inputs[slot["name"]] = [str(origin), origin_slot]
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return prompt


# ---------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------


def _output_types(cls) -> tuple[str, ...]:
    return tuple(cls.RETURN_TYPES)


def check_links(workflow: dict, defs: dict[str, type]) -> list[str]:
    """Problems with links: unknown nodes or slots, and socket types that do not match."""
    nodes = {n["id"]: n for n in _live_nodes(workflow)}
    problems = []
    for link_id, (origin, origin_slot, target, target_slot, typ) in _links(workflow).items():
        if origin not in nodes or target not in nodes:
            problems.append(f"link {link_id}: connects a missing or frontend-only node")
            continue
        source, dest = defs[nodes[origin]["type"]], defs[nodes[target]["type"]]
        out_type = _output_types(source)[origin_slot]
        slot = nodes[target]["inputs"][target_slot]
        if slot.get("link") != link_id:
            problems.append(f"link {link_id}: node {target} input slot {target_slot} does not point back to it")
        expected = input_type(dest, slot["name"])
        if not out_type == typ == slot["type"] == expected:
            problems.append(
                f"link {link_id}: {nodes[origin]['type']} output {origin_slot} is {out_type}, link says {typ}, "
                f"{nodes[target]['type']}.{slot['name']} takes {expected} (slot says {slot['type']})"
            )
    return problems


def check_values(prompt: dict, defs: dict[str, type]) -> list[str]:
    """Constant inputs against their definitions (combo options, min/max) and missing required inputs."""
    problems = []
    for node_id, entry in prompt.items():
        cls = defs[entry["class_type"]]
        for section, name, spec in _inputs(cls):
            value = entry["inputs"].get(name)
            if value is None:
                if section == "required":
                    problems.append(f"node {node_id} ({entry['class_type']}): required input {name!r} is missing")
                continue
            if isinstance(value, list) or not is_widget(spec):  # linked, or a socket
                continue
            problems += [f"node {node_id} ({entry['class_type']}).{name}: {p}" for p in _value_problems(spec, value)]
    return problems


def _value_problems(spec: tuple, value) -> list[str]:
    options, choices = _options(spec), combo_options(spec)
    if choices is not None:
        return [] if value in choices else [f"{value!r} is not one of {choices[:8]}"]
    if spec[0] in ("INT", "FLOAT"):
        if "min" in options and value < options["min"] or "max" in options and value > options["max"]:
            return [f"{value} outside {options.get('min')}..{options.get('max')}"]
    return []


# ---------------------------------------------------------------------------
# Execution
# ---------------------------------------------------------------------------


@dataclass
class Run:
    outputs: dict[str, tuple]  # node id -> returned values
    ui: dict[str, dict]  # node id -> {"images": [...], ...}


def _order(prompt: dict) -> list[str]:
    order, done = [], set()
    while len(order) < len(prompt):
        ready = [
            node_id for node_id, entry in prompt.items()
            if node_id not in done and all(v[0] in done for v in entry["inputs"].values() if isinstance(v, list))
        ]
        if not ready:
            raise WorkflowError("the workflow has a cycle")
        order += ready
        done.update(ready)
    return order


def _validate(cls, constants: dict) -> None:
    if is_v3(cls):  # ComfyUI calls validate_inputs only when the class overrides it
        check = cls.validate_inputs if _overrides_validate_inputs(cls) else None
    else:
        check = getattr(cls, "VALIDATE_INPUTS", None)
    if check is None:
        return
    names = inspect.getfullargspec(check).args
    result = check(**{k: v for k, v in constants.items() if k in names})
    if result is not True:
        raise WorkflowError(f"{cls.__name__}: {result}")


def _overrides_validate_inputs(cls) -> bool:
    base = next(klass for klass in cls.__mro__ if klass.__name__ == "ComfyNode")
    return cls.validate_inputs.__func__ is not base.validate_inputs.__func__


def _call(cls, kwargs: dict, prompt: dict, extra_pnginfo: dict | None) -> tuple[tuple, dict | None]:
    """Run one node: (outputs, ui or None)."""
    if is_v3(cls):
        clone = cls.PREPARE_CLASS_CLONE({"PROMPT": prompt, "EXTRA_PNGINFO": extra_pnginfo})
        result = clone.EXECUTE_NORMALIZED(**kwargs)
        return tuple(result.args), result.ui
    hidden = cls.INPUT_TYPES().get("hidden", {})
    if "prompt" in hidden:
        kwargs["prompt"] = prompt
    if "extra_pnginfo" in hidden:
        kwargs["extra_pnginfo"] = extra_pnginfo
    result = getattr(cls(), cls.FUNCTION)(**kwargs)
    if isinstance(result, dict):
        return tuple(result.get("result", ())), result.get("ui", {})
    return tuple(result), None


def execute(prompt: dict, defs: dict[str, type], extra_pnginfo: dict | None = None) -> Run:
    """Run an API prompt: constants validated first (as the server does), then every node in order."""
    problems = check_values(prompt, defs)
    if problems:
        raise WorkflowError("; ".join(problems))
    for entry in prompt.values():
        _validate(defs[entry["class_type"]], {k: v for k, v in entry["inputs"].items() if not isinstance(v, list)})
    run = Run({}, {})
    for node_id in _order(prompt):
        entry = prompt[node_id]
        cls = defs[entry["class_type"]]
        kwargs = {k: (run.outputs[v[0]][v[1]] if isinstance(v, list) else v) for k, v in entry["inputs"].items()}
        run.outputs[node_id], ui = _call(cls, kwargs, prompt, extra_pnginfo)
        if ui is not None:
            run.ui[node_id] = ui
    return run
