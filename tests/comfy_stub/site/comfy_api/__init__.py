"""Test stand-in for ComfyUI's ``comfy_api`` package: only the pinned V3 schema version the pack uses."""
