"""Open-Sora fine-tuning with accelerate (installed as ``opensora_train``)."""
