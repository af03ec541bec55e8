"""The fuzz run's one-line summary, from schemathesis' JSON report:

    fuzz: cases=N server_errors=M

N is the number of test cases schemathesis generated and ran (its own count, as in its
"Test cases: N generated" line); M the number of distinct server errors (5xx) it found.
Exits 1 when M > 0 or when the run did not complete.
"""

from __future__ import annotations

import json
import sys

SERVER_ERROR = "ST101"  # schemathesis' code for the not_a_server_error check's failures


def main() -> int:
    with open(sys.argv[1], encoding="utf-8") as f:
        report = json.load(f)
    cases = report["test_cases"]["generated"]
    server_errors = sum(f.get("count", 0) for f in report.get("failures", []) if f.get("code") == SERVER_ERROR)
    print(f"fuzz: cases={cases} server_errors={server_errors}")
    if not report.get("complete", False):
        print(f"fuzz: the run stopped early ({report.get('stop_reason')})", file=sys.stderr)
        return 1
    return 1 if server_errors else 0


if __name__ == "__main__":
    sys.exit(main())
