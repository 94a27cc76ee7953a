"""Where a VAE decode's resident peak comes from: the resident-memory high-water of every leaf module call
and of the code between two calls, ours or the official Open-Sora v1.2.0 code, in a fresh process.

    python benchmarks/rss_timeline.py [--official OFFICIAL_CHECKOUT] [--frames 17 --height 128 --width 224]
        [--dtype fp32] [--top 12]

A forward pre-hook and hook on every leaf module reset Linux's high-water mark (``/proc/self/clear_refs``)
and read it back, so each interval (a module call, or the ops between two calls such as an interpolation or
an in-place sum) gets its own peak above the resident memory at the start of the decode. The table lists the
intervals with the highest peaks and, for each, the resident memory before and after it: a peak well above
both is a transient of that interval (a backend workspace, a copy). glibc's mmap threshold is fixed as in the
other benchmarks, so freed tensors leave the resident set.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
from measure import DTYPES, _status_mib, rss_mib, run_child  # noqa: E402


class Timeline:
    """(label, RSS before, high-water during, RSS after) per interval, in MiB above ``base``."""

    def __init__(self, model: torch.nn.Module):
        self.rows: list[tuple[str, float, float, float]] = []
        self.base = rss_mib()
        self.last = "start"
        self._reset()
        for name, module in model.named_modules():
            if not list(module.children()):
                module.register_forward_pre_hook(self._pre(name))
                module.register_forward_hook(self._post(name))

    def _reset(self) -> float:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
        self.start = rss_mib()
        return self.start

    def close(self, label: str) -> None:
        peak, after = _status_mib("VmHWM"), rss_mib()
        self.rows.append((label, self.start - self.base, peak - self.base, after - self.base))
        self._reset()

    def _pre(self, name: str):
        def hook(module, args):
            self.close(f"between {self.last} -> {name}")
        return hook

    def _post(self, name: str):
        def hook(module, args, out):
            self.close(f"{name} ({type(module).__name__})")
            self.last = name
        return hook


def worker(args) -> dict:
    from vae_memory import build_vae
    from vs_official import official_vae

    from opensora_core.geometry import VAE_V1_2

    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    dtype = DTYPES[args.dtype]
    vae = build_vae()
    if args.official:
        vae = official_vae(args.official, vae)
    vae = vae.to(dtype)
    latent = VAE_V1_2.latent_size(args.frames, args.height, args.width)
    z = torch.randn(1, 4, *latent, generator=torch.Generator().manual_seed(1), dtype=dtype)
    timeline = Timeline(vae)
    with torch.no_grad():
        if args.official:
            vae.decode(z, num_frames=args.frames)
        else:
            vae.decode(z, args.frames)
    timeline.close("end")
    return {"rows": timeline.rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--official", type=Path)
    parser.add_argument("--frames", type=int, default=17)
    parser.add_argument("--height", type=int, default=128)
    parser.add_argument("--width", type=int, default=224)
    parser.add_argument("--dtype", choices=DTYPES, default="fp32")
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        import json

        print(json.dumps(worker(args)))
        return
    forwarded = [f"--{k}={v}" for k, v in vars(args).items() if k in ("frames", "height", "width", "dtype")]
    if args.official:
        forwarded.append(f"--official={args.official}")
    rows = run_child(__file__, [*forwarded, "--worker"])["rows"]
    print(f"{'interval':70s} {'before':>8s} {'peak':>8s} {'after':>8s}  (MiB above the RSS at the start)")
    for label, before, peak, after in sorted(rows, key=lambda r: -r[2])[: args.top]:
        print(f"{label[:70]:70s} {before:8.1f} {peak:8.1f} {after:8.1f}")
    print(f"peak of the decode: {max(r[2] for r in rows):.1f} MiB over {len(rows)} intervals")


if __name__ == "__main__":
    main()
