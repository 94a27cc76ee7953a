"""Reference conditioning: mask strategies, pixel/latent frame positions and the loop (extension) mode.

The flow, each step once: :func:`parse_mask_strategy` turns text into typed :class:`MaskGroup` objects
(their ``units`` say latent or pixel frames; :func:`check_groups` is the rule set that needs no frame
counts); a family's :class:`MaskStrategyConditioning` converts, checks and places a sample's groups once
(:class:`PlacedGroup`, with the loop-mode continuation groups); :func:`insert_references` copies the
placed reference latents into the noise and gives the frame mask the sampler reads
(:mod:`opensora_core.sampling`), and :func:`describe_placements` reports the same placements.
:func:`apply_mask_strategy` places and inserts in one call, as the official function does.

Open-Sora-Plan v1.3 (image to video) is conditioned on whole pixel frames instead:
:class:`InpaintConditioning` (:mod:`.osp_frames`) places given frames and builds the inpainting channels
of :mod:`.osp_inpaint`.
"""

from .loop import continuation_groups, extension_drop_frames, extension_total_frames
from .osp_frames import GivenFrames, InpaintConditioning
from .plan import (
    TASKS,
    MaskStrategyConditioning,
    Task,
    describe_mask_strategy,
    describe_placements,
    edit_strategy,
    encode_references,
    extend_strategy,
    first_frame_strategy,
    first_last_strategy,
    place_strategy,
    task_groups,
    to_latent_groups,
    validate_mask_strategy,
)
from .strategy import (
    FIELDS,
    LATENT,
    PIXEL,
    V1_1,
    V1_2,
    VERSIONS,
    MaskGroup,
    PlacedGroup,
    Units,
    apply_mask_strategy,
    check_groups,
    check_version,
    find_nearest_point,
    format_mask_strategy,
    insert_references,
    parse_mask_strategy,
    place_group,
)

__all__ = [
    "FIELDS",
    "GivenFrames",
    "InpaintConditioning",
    "LATENT",
    "PIXEL",
    "TASKS",
    "V1_1",
    "V1_2",
    "VERSIONS",
    "MaskGroup",
    "MaskStrategyConditioning",
    "PlacedGroup",
    "Task",
    "Units",
    "apply_mask_strategy",
    "check_groups",
    "check_version",
    "continuation_groups",
    "describe_mask_strategy",
    "describe_placements",
    "edit_strategy",
    "encode_references",
    "extend_strategy",
    "extension_drop_frames",
    "extension_total_frames",
    "find_nearest_point",
    "first_frame_strategy",
    "first_last_strategy",
    "format_mask_strategy",
    "insert_references",
    "parse_mask_strategy",
    "place_group",
    "place_strategy",
    "task_groups",
    "to_latent_groups",
    "validate_mask_strategy",
]
