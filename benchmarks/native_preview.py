"""Live previews in a real ComfyUI: how many arrive over the websocket, and how close the last one is to the video.

Starts a ComfyUI server (CPU, loopback) with this pack as a custom node (through an extra_model_paths.yaml
``custom_nodes`` entry, nothing is written into ComfyUI's tree) and the bundled demo model, runs text to video
twice on the same prompt and seed (the Open-Sora Sampler node; the native MODEL through SamplerCustomAdvanced,
30 steps), listens on ComfyUI's websocket and prints per run: the preview images received (one per step is
expected), and the PSNR of the last preview (the fitted latent -> RGB map of latent frame 0 as ComfyUI sends
it: an 8x8 JPEG for the 64x64 demo) against the saved first frame, 8x8 block-averaged (PNG from SaveImage).

Run it with ComfyUI's Python (it needs aiohttp, PIL and numpy, all ComfyUI requirements)::

    <ComfyUI venv>/bin/python benchmarks/native_preview.py --comfyui PATH/TO/ComfyUI
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from io import BytesIO
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "demo"
PROMPT = "a red circle moves to the right on a black background"
STEPS, SIZE, FRAMES, FPS = 30, 64, 17, 8.0
PREVIEW_IMAGE, PREVIEW_WITH_METADATA = 1, 4  # ComfyUI's binary websocket event types


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _loaders() -> dict:
    return {
        "1": {"class_type": "OpenSoraT5Loader", "inputs": {"t5_name": "opensora-demo-t5/", "dtype": "fp32"}},
        "3": {"class_type": "OpenSoraVAELoader", "inputs": {"vae_name": "opensora-demo-vae-v1.2.safetensors",
                                                            "dtype": "fp32"}},
    }


def _encode(model_link: list | None = None) -> dict:
    """Text Encode; with the Open-Sora model connected the caption gets its length (the demo's: 64 tokens),
    else 300 (the native MODEL takes the valid tokens of either)."""
    inputs = {"text": PROMPT, "caption_length": "v1.2 (300 tokens)", "aesthetic_score": -1.0, "motion_score": -1.0,
              "camera_motion": "none", "clean_caption": True, "t5": ["1", 0]}
    if model_link is not None:
        inputs.update(caption_length="from model", model=model_link)
    return {"class_type": "OpenSoraTextEncode", "inputs": inputs}


def _output(samples: list, prefix: str) -> dict:
    return {
        "13": {"class_type": "OpenSoraVAEDecode", "inputs": {"vae": ["3", 0], "samples": samples, "tile_size": 512,
                                                             "tiling": "off (retry tiled on out-of-memory)",
                                                             "tile_overlap": 128}},
        "14": {"class_type": "SaveImage", "inputs": {"images": ["13", 0], "filename_prefix": prefix}},
    }


def our_sampler_prompt() -> dict:
    model = {"class_type": "OpenSoraModelLoader", "inputs": {"model_name": "opensora-demo-stdit3.safetensors",
                                                             "weight_dtype": "fp32", "attention": "sdpa"}}
    sampler = {"class_type": "OpenSoraSampler", "inputs": {
        "model": ["2", 0], "vae": ["3", 0], "positive": ["4", 0], "width": SIZE, "height": SIZE, "num_frames": FRAMES,
        "fps": FPS, "steps": STEPS, "cfg": 7.0, "seed": 0, "loops": 1, "condition_frame_length": 0,
        "condition_frame_edit": 0.0, "align": 0}}
    return {**_loaders(), "2": model, "4": _encode(["2", 0]), "6": sampler, **_output(["6", 0], "preview_ours")}


def native_prompt() -> dict:
    size = {"width": SIZE, "height": SIZE, "num_frames": FRAMES}
    nodes = {
        "2": {"class_type": "OpenSoraNativeModelLoader", "inputs": {"model_name": "opensora-demo-stdit3.safetensors",
                                                                    "weight_dtype": "default"}},
        "4": _encode(),
        "5": {"class_type": "OpenSoraNullConditioning", "inputs": {"positive": ["4", 1]}},
        "6": {"class_type": "OpenSoraEmptyLatentVideo", "inputs": {"vae": ["3", 0], **size, "batch_size": 1}},
        "7": {"class_type": "OpenSoraSamplingSettings", "inputs": {"model": ["2", 0], **size, "fps": FPS,
                                                                   "shift": "exact"}},
        "8": {"class_type": "CFGGuider", "inputs": {"model": ["7", 0], "positive": ["4", 1], "negative": ["5", 0],
                                                    "cfg": 7.0}},
        "9": {"class_type": "OpenSoraSigmas", "inputs": {"model": ["7", 0], "steps": STEPS}},
        "10": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}},
        "11": {"class_type": "RandomNoise", "inputs": {"noise_seed": 0}},
        "12": {"class_type": "SamplerCustomAdvanced", "inputs": {"noise": ["11", 0], "guider": ["8", 0],
                                                                 "sampler": ["10", 0], "sigmas": ["9", 0],
                                                                 "latent_image": ["6", 0]}},
    }
    return {**_loaders(), **nodes, **_output(["12", 0], "preview_native")}


class Server:
    """A ComfyUI server in its own process group, with this pack and the demo models."""

    def __init__(self, comfyui: Path, work: Path):
        self.comfyui, self.work, self.port = comfyui, work, _free_port()
        (work / "custom_nodes").mkdir()
        (work / "custom_nodes" / "opensora").symlink_to(REPO)
        config = {"opensora_demo": {"base_path": str(DEMO / "models"), "custom_nodes": str(work / "custom_nodes"),
                                    "diffusion_models": "diffusion_models", "vae": "vae",
                                    "text_encoders": "text_encoders"}}
        (work / "paths.yaml").write_text(json.dumps(config))  # JSON is YAML
        dirs = {name: work / name for name in ("output", "input", "user", "temp")}
        for folder in dirs.values():
            folder.mkdir()
        cmd = [sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
               "--preview-method", "latent2rgb", "--extra-model-paths-config", str(work / "paths.yaml"),
               "--database-url", f"sqlite:///{work / 'comfyui.db'}", "--disable-auto-launch",
               *[arg for name, folder in dirs.items() for arg in (f"--{name}-directory", str(folder))]]
        self.log = open(work / "server.log", "wb")
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONDONTWRITEBYTECODE": "1"}
        self.proc = subprocess.Popen(cmd, cwd=comfyui, stdout=self.log, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait(self, timeout: float = 300) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI exited; see {self.work / 'server.log'}")
            try:
                urllib.request.urlopen(self.url + "/system_stats", timeout=5)
                return
            except OSError:
                time.sleep(0.5)
        raise TimeoutError("ComfyUI did not start")

    def stop(self) -> None:
        os.killpg(self.proc.pid, 15)  # the group created for this server only
        self.proc.wait(30)
        self.log.close()


async def run(server: Server, prompt: dict) -> tuple[list[bytes], list[dict]]:
    """Submit a prompt, collect its preview images (JPEG/PNG bytes) and the files it saved."""
    import aiohttp

    client = str(uuid.uuid4())
    previews = []
    async with aiohttp.ClientSession() as session, session.ws_connect(f"{server.url}/ws?clientId={client}") as ws:
        async with session.post(f"{server.url}/prompt", json={"prompt": prompt, "client_id": client}) as reply:
            body = await reply.json()
            if reply.status != 200:
                raise RuntimeError(json.dumps(body))
            prompt_id = body["prompt_id"]
        async for message in ws:
            if message.type == aiohttp.WSMsgType.BINARY:
                previews.append(_image_bytes(message.data))
            elif message.type == aiohttp.WSMsgType.TEXT:
                event = json.loads(message.data)
                data = event.get("data", {})
                if event["type"] == "execution_error":
                    raise RuntimeError(data.get("exception_message"))
                if event["type"] == "executing" and data.get("node") is None and data.get("prompt_id") == prompt_id:
                    break
        async with session.get(f"{server.url}/history/{prompt_id}") as reply:
            history = (await reply.json())[prompt_id]
    images = [img for out in history["outputs"].values() for img in out.get("images", [])]
    return [p for p in previews if p is not None], images


def _image_bytes(data: bytes) -> bytes | None:
    (event,) = struct.unpack(">I", data[:4])
    if event == PREVIEW_IMAGE:
        return data[8:]  # then the image type (4 bytes) and the image
    if event == PREVIEW_WITH_METADATA:
        (length,) = struct.unpack(">I", data[4:8])
        return data[8 + length:]
    return None


def psnr(preview: bytes, frame_path: Path, factor: int = 8) -> float:
    """PSNR (dB) at preview resolution (one pixel per latent pixel; ComfyUI scales the 8x8 map image up to its
    preview size for display, so it is box-averaged back): the preview against the saved frame's 8x8 blocks."""
    import numpy as np
    from PIL import Image

    frame = np.asarray(Image.open(frame_path).convert("RGB"), dtype=np.float64)  # (H, W, 3)
    h, w = frame.shape[0] // factor, frame.shape[1] // factor
    shown = Image.open(BytesIO(preview)).convert("RGB")
    small = np.asarray(shown.resize((w, h), Image.Resampling.BOX), dtype=np.float64)  # (h, w, 3)
    blocks = frame[: h * factor, : w * factor].reshape(h, factor, w, factor, 3).mean(axis=(1, 3))
    error = float(((small - blocks) ** 2).mean())
    return math.inf if error == 0 else 10 * math.log10(255**2 / error)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--comfyui", type=Path, required=True, help="a ComfyUI checkout (its main.py)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        server = Server(args.comfyui, Path(tmp))
        try:
            server.wait()
            for name, prompt in (("Open-Sora Sampler node", our_sampler_prompt()),
                                 ("native MODEL + SamplerCustomAdvanced", native_prompt())):
                previews, images = asyncio.run(run(server, prompt))
                first = sorted(images, key=lambda i: i["filename"])[0]
                frame = Path(tmp) / "output" / first["subfolder"] / first["filename"]
                print(f"{name}: {len(previews)} previews over the websocket for {STEPS} steps; last preview vs "
                      f"saved frame 0 at preview size: PSNR {psnr(previews[-1], frame):.1f} dB")
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
