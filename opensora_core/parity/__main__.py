"""``python -m opensora_core.parity CASE_DIR...``: one line per case, then a summary.

Exit status 0 only if every case passes.
"""

from __future__ import annotations

import argparse
import sys

from .runner import discover, run_case


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m opensora_core.parity",
        description="Replay official Open-Sora reference cases with this implementation.",
    )
    parser.add_argument("cases", nargs="+", help="case folders (with config.json) or folders that contain them")
    parser.add_argument("-v", "--verbose", action="store_true", help="print every message and the time per case")
    args = parser.parse_args(argv)

    try:
        cases = discover(args.cases)
    except FileNotFoundError as err:
        parser.error(str(err))
    passed = failed = 0
    for path in cases:
        result = run_case(path)
        print(result.line(), flush=True)
        if args.verbose:
            print(f"    {result.seconds:.2f} s  {path}")
            for message in result.messages:
                print(f"    {message}")
        passed += result.passed
        failed += not result.passed
    print(f"{passed} passed, {failed} failed")
    return 0 if failed == 0 and passed > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
