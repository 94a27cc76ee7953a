"""Text side of Open-Sora: T5 encoding, caption tensors, prompt syntax and caption cleaning.

* :mod:`.t5`: ``load_t5_encoder`` (Hugging Face folder or single ComfyUI-style file) and
  :class:`~.t5.T5TextEncoder` with the official max lengths (:data:`~.t5.T5_PRESETS`);
* :mod:`.caption`: :class:`~.caption.Caption` (y, mask), the null caption for guidance and
  the helpers that pad ComfyUI's T5 output into a caption;
* :mod:`.prompts`: score suffixes, the JSON options and the ``|0|...`` loop syntax;
* :mod:`.cleaning`: the official caption cleaner (``text_preprocessing``).

Submodules import ``transformers``, ``ftfy`` and ``bs4`` only when used.
"""
