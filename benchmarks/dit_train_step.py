"""Time the demo DiT stage's training step on the CPU with the cached latents and captions read from disk every
step (``cache.memory_gb = 0``) and kept in memory once read (the default, 1 GB).

The data is the demo's shape: clips of 17 frames at 64x64, whose VAE v1.2 latents are (4, 5, 8, 8), and captions of
40-60 byte tokens of width 64 (8 distinct captions per 64 clips), written as safetensors files as the trainer's
cache writes them; the model is the demo's STDiT3 (``train/configs/demo/dit.toml``: hidden 112, depth 4), random
weights. One step = the batch of 16 from torch's DataLoader (no workers, as the demo build), the STDiT3 forward
and a mean-square loss, its backward and a fused AdamW step. Prints, per setting, the median wall and process-CPU
seconds per step of the second epoch (the first fills the in-memory cache) and of the loading alone, the ratio
to the first disk run, and the machine's load; each setting runs twice, alternating. Not a test.

    python benchmarks/dit_train_step.py [--clips 640] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure import Timing, load_line  # noqa: E402

from opensora_core.checkpoints import save_checkpoint  # noqa: E402
from opensora_core.models.stdit3 import STDiT3, STDiT3Config  # noqa: E402
from opensora_train.config import load_config  # noqa: E402
from opensora_train.dit import CachedClipDataset  # noqa: E402

CONFIG = ROOT / "train" / "configs" / "demo" / "dit.toml"
LATENT = (4, 5, 8, 8)  # (C, t, h, w): 17 frames of 64x64 through the VAE v1.2
BATCH = 16
SIZES = {"height": 64.0, "width": 64.0, "num_frames": 17.0, "fps": 8.0, "ar": 1.0}


def write_cache(root: Path, clips: int, channels: int) -> tuple[list[Path], list[Path]]:
    """``clips`` latent files and one caption file per 8 clips, random values."""
    generator = torch.Generator().manual_seed(0)
    latents, captions = [], []
    for i in range(clips):
        latents.append(root / f"latent_{i:05d}.safetensors")
        save_checkpoint({"latent": torch.randn(LATENT, generator=generator)}, latents[-1])
    for i in range(0, clips, 8):
        path = root / f"caption_{i:05d}.safetensors"
        tokens = 40 + int(torch.randint(0, 21, (1,), generator=generator))
        save_checkpoint({"y": torch.randn(tokens, channels, generator=generator)}, path)
        captions += [path] * min(8, clips - i)
    return latents, captions


def time_epochs(latents, captions, max_length: int, memory_gb: float, model_config: dict) -> tuple[list, list]:
    """(step timings, loading timings) of the second epoch."""
    torch.manual_seed(0)
    model = STDiT3(STDiT3Config(**model_config)).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    dataset = CachedClipDataset([None] * len(latents), latents, captions, max_length, [SIZES] * len(latents),
                                memory_bytes=memory_gb * 2**30)
    loader = torch.utils.data.DataLoader(dataset, batch_size=BATCH, shuffle=True, drop_last=True,
                                         generator=torch.Generator().manual_seed(0))

    def train_step(batch: dict) -> None:
        x0 = batch["x0"]
        t = torch.rand(x0.shape[0]) * 1000
        out = model(torch.randn_like(x0), t, batch["y"], batch["mask"], fps=batch["fps"], height=batch["height"],
                    width=batch["width"])
        out[:, : x0.shape[1]].float().sub(x0).pow(2).mean().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    steps, loads = [], []
    for epoch in range(2):
        batches = iter(loader)
        while True:
            wall, cpu = time.perf_counter(), time.process_time()
            batch = next(batches, None)
            load = Timing(time.perf_counter() - wall, time.process_time() - cpu)
            if batch is None:
                break
            step = Timing.of(train_step, batch)
            if epoch == 1:
                loads.append(load)
                steps.append(Timing(load.wall + step.wall, load.cpu + step.cpu))
    return steps, loads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=640)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_config(CONFIG)
    model_config = dict(cfg.model.config)
    with tempfile.TemporaryDirectory() as folder:
        latents, captions = write_cache(Path(folder), args.clips, model_config["caption_channels"])
        print(f"demo DiT stage, {args.clips} clips, batch {BATCH}, {args.threads} threads, {load_line()}")
        base = None
        settings = (("read from disk every step (cache.memory_gb = 0)", 0.0),
                    ("kept in memory once read (the default, 1 GB)", 1.0))
        for name, memory_gb in settings * 2:  # twice, alternating: the first run also warms the allocator
            steps, loads = time_epochs(latents, captions, model_config["model_max_length"], memory_gb, model_config)
            wall = statistics.median(s.wall for s in steps)
            cpu = statistics.median(s.cpu for s in steps)
            load = statistics.median(x.wall for x in loads)
            base = base or wall
            print(f"  {name:50s} {wall:.3f} s/step wall, {cpu:.3f} CPU s, loading {load * 1000:.1f} ms "
                  f"({wall / base:.2f}x the first disk run)")


if __name__ == "__main__":
    main()
