"""Open-Sora core: models, VAEs, text encoding, samplers and conditioning.

Framework-free (never imports ComfyUI) and side-effect free at import: no GPU
probing, no file access, no global torch flags. Submodules are imported on use.
"""

__version__ = "0.1.0"
