"""Replays the official Open-Sora reference cases with our implementation.

Usage: ``python -m opensora_core.parity CASE_DIR [CASE_DIR ...]``; see :mod:`.runner`.
"""

from .runner import Case, CaseResult, Comparison, Handler, discover, run_case

__all__ = ["Case", "CaseResult", "Comparison", "Handler", "discover", "run_case"]
