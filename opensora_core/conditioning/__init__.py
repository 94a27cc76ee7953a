"""Reference conditioning: mask strategies, pixel/latent frame positions and the loop (extension) mode.

Typical use (v1.2, image-to-video)::

    groups = validate_mask_strategy("0", latent_frames=15, ref_latent_frames=[1])
    z, mask = apply_mask_strategy(noise, [[image_latent]], [groups])
    print(describe_mask_strategy(groups, latent_frames=15, ref_latent_frames=[1],
                                 geometry=VAE_V1_2, num_frames=51))

``mask`` goes to the sampler (:mod:`opensora_core.sampling`), which pins the reference frames.
"""

from .loop import (
    append_generated,
    extension_drop_frames,
    extension_total_frames,
    gradio_v1_1_length_plan,
    loop_strategies,
    loops_for_length,
)
from .plan import (
    TASKS,
    MaskStrategyConditioning,
    PixelCondition,
    describe_mask_strategy,
    edit_strategy,
    extend_strategy,
    first_frame_strategy,
    first_last_strategy,
    pixel_conditions_to_groups,
    task_groups,
    validate_mask_strategy,
)
from .strategy import (
    FIELDS,
    V1_1,
    V1_2,
    VERSIONS,
    MaskGroup,
    Placement,
    apply_mask_strategy,
    find_nearest_point,
    format_mask_strategy,
    parse_mask_strategy,
    place_group,
    split_mask_strategy,
)

__all__ = [
    "FIELDS",
    "TASKS",
    "V1_1",
    "V1_2",
    "VERSIONS",
    "MaskGroup",
    "MaskStrategyConditioning",
    "PixelCondition",
    "Placement",
    "append_generated",
    "apply_mask_strategy",
    "describe_mask_strategy",
    "edit_strategy",
    "extend_strategy",
    "extension_drop_frames",
    "extension_total_frames",
    "find_nearest_point",
    "first_frame_strategy",
    "first_last_strategy",
    "format_mask_strategy",
    "gradio_v1_1_length_plan",
    "loop_strategies",
    "loops_for_length",
    "parse_mask_strategy",
    "pixel_conditions_to_groups",
    "place_group",
    "split_mask_strategy",
    "task_groups",
    "validate_mask_strategy",
]
