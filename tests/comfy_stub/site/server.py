"""Stand-in for ComfyUI's ``server`` module: the PromptServer instance and its on-prompt handlers
(server.py: ``add_on_prompt_handler``; POST /prompt calls ``trigger_on_prompt`` and then validates the prompt)."""

from __future__ import annotations

import logging


class PromptServer:
    instance: PromptServer | None = None

    def __init__(self):
        self.on_prompt_handlers = []
        PromptServer.instance = self

    def add_on_prompt_handler(self, handler):
        self.on_prompt_handlers.append(handler)

    def trigger_on_prompt(self, json_data):
        for handler in self.on_prompt_handlers:
            try:
                json_data = handler(json_data)
            except Exception:  # ComfyUI logs a failing handler and goes on
                logging.exception("an on_prompt handler failed")
        return json_data


PromptServer()  # ComfyUI creates the server before it loads custom nodes
