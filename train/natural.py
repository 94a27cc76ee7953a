"""Natural imagery for the demo VAE: photographs shipped inside scikit-image, as stills and pseudo-videos.

The demo VAE learns the demo's shapes, but a user fine-tuning the demo model on their own clips needs a VAE
that can represent camera footage too. The photographs in ``skimage.data`` (installed with the trainer's
``train`` extra; never needed by the node pack) are cut into 64x64 stills and 18-frame clips that pan and
zoom over a photograph, as a camera would. A fixed set of photographs is held out of training for the
evaluation (``HELD_OUT``).
"""

from __future__ import annotations

import math
import random
from pathlib import Path

import torch
import torch.nn.functional as F

# Photographs of skimage.data that ship inside the package (no download). Grey ones are used as grey RGB.
TRAINING = ("astronaut", "rocket", "hubble_deep_field", "immunohistochemistry", "retina", "motorcycle_left",
            "brick", "grass", "gravel", "moon", "page", "text", "cell", "clock")
HELD_OUT = ("chelsea", "coffee", "camera", "coins")  # never trained on: the evaluation's photographs


def load(name: str) -> torch.Tensor:
    """A photograph of ``skimage.data`` as (3, H, W) float32 in 0..1."""
    try:
        from skimage import data
    except ImportError as err:
        raise ImportError("the demo VAE's natural images come from scikit-image: pip install -e .[train]") from err
    fetch = {"motorcycle_left": lambda: data.stereo_motorcycle()[0]}.get(name) or getattr(data, name)
    image = torch.as_tensor(fetch()).float()
    image = image / 255 if image.max() > 1.5 else image
    if image.ndim == 2:
        image = image[..., None].expand(*image.shape, 3)
    return image[..., :3].permute(2, 0, 1).contiguous()  # (3, H, W)


def _resize(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(3, H, W) -> (3, height, width), antialiased (a camera's downscaled frame, not an aliased one)."""
    return F.interpolate(image[None], size=(height, width), mode="bilinear", antialias=True, align_corners=False)[0]


def still(image: torch.Tensor, size: int) -> torch.Tensor:
    """The largest centred square of a photograph at ``size`` pixels: (1, size, size, 3) in 0..1."""
    _, h, w = image.shape
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    return _resize(image[:, top : top + side, left : left + side], size, size).permute(1, 2, 0)[None].clamp(0, 1)


def pan_zoom(image: torch.Tensor, rng: random.Random, size: int, num_frames: int) -> torch.Tensor:
    """(T, size, size, 3) in 0..1: a square window over the photograph that pans and zooms smoothly.

    The window is 1.5x the output size to all of the photograph's short side, moves up to 40 % of its side
    and zooms by up to 20 % over the clip. The part of the photograph the clip sees is scaled so the window
    is ``size`` pixels (antialiased, as a camera's downscaled frame), then sampled bilinearly every frame.
    """
    _, h, w = image.shape
    side = rng.uniform(min(1.5 * size, min(h, w)), min(h, w))  # window side in photograph pixels
    zoom = [1.0, rng.uniform(0.83, 1.2)]
    rng.shuffle(zoom)
    largest = side * max(zoom)
    if largest > min(h, w):  # zooming out past the photograph: shrink the window instead
        side *= min(h, w) / largest
        largest = min(h, w)
    angle, shift = rng.uniform(0, 2 * math.pi), rng.uniform(0, 0.4) * side
    x0, y0 = rng.uniform(0, w - largest), rng.uniform(0, h - largest)  # top-left of the largest window
    dx = min(max(shift * math.cos(angle), -x0), w - largest - x0)
    dy = min(max(shift * math.sin(angle), -y0), h - largest - y0)
    left, top = int(min(x0, x0 + dx)), int(min(y0, y0 + dy))
    right, bottom = math.ceil(max(x0, x0 + dx) + largest), math.ceil(max(y0, y0 + dy) + largest)
    scale = size / side
    part = image[:, top:bottom, left:right]
    work = _resize(part, max(2, round(part.shape[1] * scale)), max(2, round(part.shape[2] * scale)))
    sy, sx = work.shape[1] / part.shape[1], work.shape[2] / part.shape[2]
    frames = []
    for t in range(num_frames):
        a = t / max(1, num_frames - 1)
        window = side * (zoom[0] + (zoom[1] - zoom[0]) * a)
        cx = x0 + dx * a + largest / 2 - left
        cy = y0 + dy * a + largest / 2 - top
        frames.append(_window(work, cx * sx, cy * sy, window * sx, size))
    return torch.stack(frames).clamp(0, 1)


def _window(work: torch.Tensor, cx: float, cy: float, window: float, size: int) -> torch.Tensor:
    """Bilinear samples of the ``window``-pixel square centred at (cx, cy): (size, size, 3)."""
    _, h, w = work.shape
    offsets = (torch.arange(size, dtype=torch.float32) + 0.5) / size - 0.5  # (size,) in -0.5..0.5
    xs = (cx + offsets * window) / w * 2 - 1
    ys = (cy + offsets * window) / h * 2 - 1
    grid = torch.stack(torch.meshgrid(ys, xs, indexing="ij")[::-1], dim=-1)[None]  # (1, size, size, 2) as (x, y)
    out = F.grid_sample(work[None], grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out[0].permute(1, 2, 0)


# ---------------------------------------------------------------------------
# More variety than 14 photographs: colour/geometry augmentation and "dead leaves" images
# ---------------------------------------------------------------------------


def augment(frames: torch.Tensor, rng: random.Random) -> torch.Tensor:
    """(T, H, W, 3) in 0..1, flipped/rotated and recoloured at random (hue rotation, channel order, saturation,
    gamma, contrast; sometimes grey). With only 14 training photographs a VAE otherwise learns their colours
    (held-out photographs came back tinted, 6-7 dB below the training ones)."""
    if rng.random() < 0.5:
        frames = frames.flip(2)
    frames = frames.rot90(rng.randint(0, 3), dims=(1, 2))
    frames = frames[..., torch.randperm(3, generator=torch.Generator().manual_seed(rng.randrange(2**31)))]
    angle = rng.uniform(0, 2 * math.pi)
    yiq = frames @ _RGB_TO_YIQ.T
    c, s = math.cos(angle), math.sin(angle)
    saturation = 0.0 if rng.random() < 0.15 else rng.uniform(0.6, 1.4)
    rotate = torch.tensor([[1.0, 0, 0], [0, c, -s], [0, s, c]]) * torch.tensor([1.0, saturation, saturation])[:, None]
    frames = (yiq @ rotate.T @ torch.linalg.inv(_RGB_TO_YIQ).T).clamp(0, 1)
    frames = frames ** rng.uniform(0.7, 1.4)
    mean = frames.mean()
    return ((frames - mean) * rng.uniform(0.7, 1.3) + mean + rng.uniform(-0.1, 0.1)).clamp(0, 1).contiguous()


_RGB_TO_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])


def dead_leaves(rng: random.Random, size: int, leaves: int = 200) -> torch.Tensor:
    """(3, size, size) in 0..1: a "dead leaves" picture, discs and boxes of random colours with radii drawn from
    p(r) ~ 1/r^3 (2-50 % of the size), each occluding the ones before; shaded, sometimes blurred, with grain.
    Such pictures have the statistics of natural images (edges, occlusions, a power-law spectrum) in unlimited
    variety."""
    image = torch.rand(3, 1, 1, generator=_gen(rng)).expand(3, size, size).clone()
    low, high = 0.02 * size, 0.5 * size
    for _ in range(leaves):
        radius = (low**-2 - rng.random() * (low**-2 - high**-2)) ** -0.5
        width = radius * (1.0 if rng.random() < 0.5 else rng.uniform(0.5, 1.5))
        cx, cy = rng.uniform(0, size), rng.uniform(0, size)
        x0, x1 = max(0, int(cx - width)), min(size, int(cx + width) + 1)
        y0, y1 = max(0, int(cy - radius)), min(size, int(cy + radius) + 1)
        if x0 >= x1 or y0 >= y1:
            continue
        ys = torch.arange(y0, y1, dtype=torch.float32)[:, None] + 0.5 - cy
        xs = torch.arange(x0, x1, dtype=torch.float32)[None, :] + 0.5 - cx
        inside = (xs / width) ** 2 + (ys / radius) ** 2 <= 1 if width == radius else (xs.abs() <= width) & (ys.abs() <= radius)
        color = torch.rand(3, generator=_gen(rng))
        gray = color.mean()
        color = gray + (color - gray) * rng.uniform(0.2, 1.0)  # natural colours are mostly muted
        patch = image[:, y0:y1, x0:x1]
        image[:, y0:y1, x0:x1] = torch.where(inside, color[:, None, None], patch)
    ys = torch.arange(size, dtype=torch.float32)[:, None] / size - 0.5
    xs = torch.arange(size, dtype=torch.float32)[None, :] / size - 0.5
    shade = 1 + rng.uniform(-0.5, 0.5) * xs + rng.uniform(-0.5, 0.5) * ys
    image = image * shade + rng.uniform(0, 0.05) * torch.randn(3, size, size, generator=_gen(rng))
    if rng.random() < 0.5:
        image = _blur(image, rng.uniform(0.5, 2.0))
    return image.clamp(0, 1)


def _gen(rng: random.Random) -> torch.Generator:
    return torch.Generator().manual_seed(rng.randrange(2**31))


def _blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = max(1, round(2 * sigma))
    taps = torch.exp(-0.5 * (torch.arange(-radius, radius + 1, dtype=torch.float32) / sigma) ** 2)
    taps = taps / taps.sum()
    x = F.pad(image[None], (radius, radius, radius, radius), mode="reflect")
    x = F.conv2d(x, taps.view(1, 1, 1, -1).expand(3, 1, 1, -1), groups=3)
    return F.conv2d(x, taps.view(1, 1, -1, 1).expand(3, 1, -1, 1), groups=3)[0]


def write_dataset(out_dir: str | Path, count: int, *, seed: int, num_frames: int, size: int, fps: int = 8,
                  names: tuple[str, ...] = TRAINING, prefix: str = "photo", crop: int | None = None,
                  leaves_share: float = 0.5) -> list[Path]:
    """``count`` pan/zoom clips (``num_frames`` = 1: stills of random windows), written losslessly with a
    caption each, in the folder format of ``opensora-train prepare``: over the ``names`` photographs
    (augmented, :func:`augment`) or, for ``leaves_share`` of them, over a :func:`dead_leaves` picture.

    ``crop``: write a random ``crop`` x ``crop`` part of each ``size`` x ``size`` frame (the same scale, 4x
    cheaper to train a convolutional VAE on)."""
    from opensora_core.media import write_video

    out_dir = Path(out_dir)
    rng = random.Random(seed)
    images = {name: load(name) for name in names}
    paths = []
    for index in range(count):
        if rng.random() < leaves_share:
            name, image = "dead leaves", dead_leaves(rng, 2 * size)
        else:
            name = names[index % len(names)]
            image = images[name]
        frames = augment(pan_zoom(image, rng, size, num_frames), rng)
        if crop is not None:
            x, y = rng.randint(0, size - crop), rng.randint(0, size - crop)
            frames = frames[:, y : y + crop, x : x + crop]
        path = out_dir / f"{prefix}_{index:05d}{'.png' if num_frames == 1 else '.mp4'}"
        write_video(frames, path, fps=fps, lossless=True)
        path.with_suffix(".txt").write_text(f"a picture ({name.replace('_', ' ')}), the camera pans\n")
        paths.append(path)
    return paths


def held_out_stills(size: int, per_image: int = 4, seed: int = 0) -> list[torch.Tensor]:
    """The held-out photographs: the whole (centre-cropped) picture and ``per_image - 1`` random windows."""
    rng = random.Random(seed)
    out = []
    for name in HELD_OUT:
        image = load(name)
        out.append(still(image, size))
        out += [pan_zoom(image, rng, size, 1) for _ in range(per_image - 1)]
    return out


def held_out_clips(size: int, num_frames: int, per_image: int = 2, seed: int = 0) -> list[torch.Tensor]:
    """Pan/zoom clips over the held-out photographs."""
    rng = random.Random(seed)
    return [pan_zoom(load(name), rng, size, num_frames) for name in HELD_OUT for _ in range(per_image)]


__all__ = ["HELD_OUT", "TRAINING", "held_out_clips", "held_out_stills", "load", "pan_zoom", "still", "write_dataset"]
