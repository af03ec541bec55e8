"""Schemathesis hooks for Tether's fuzz run, loaded with SCHEMATHESIS_HOOKS=hooks (run.sh puts
tests/fuzz on PYTHONPATH).

- Auth: every request is SigV4-signed (sigv4.SigV4) through schemathesis' auth extension. The
  auth is a `requests` auth, so it signs the request as it goes out: final URL, method, body
  and headers, after schemathesis has serialised them.
- Idempotency keys: the API remembers every (caller, Idempotency-Key) for a day, and the
  fuzzer draws keys from a small space ("0", "A", ...), so most POSTs carrying one would be
  answered from an earlier request (a replay, or 422 "this Idempotency-Key was used for a
  different request") without reaching the action. Three valid keys in four get a suffix that
  makes them unique; the fourth is sent as generated, so that replays and reuse are fuzzed too.
  Invalid keys are left alone (they must still be refused).
"""

from __future__ import annotations

import itertools
import re

import schemathesis

from sigv4 import SigV4

schemathesis.auth.set_from_requests(SigV4())

_VALID_KEY = re.compile(r"[\x21-\x7e]{1,255}")
_calls = itertools.count(1)


@schemathesis.hook
def before_call(context, case, kwargs):
    headers = case.headers
    if not headers:
        return
    for name, value in headers.items():
        if name.lower() == "idempotency-key":
            if isinstance(value, str) and _VALID_KEY.fullmatch(value):
                n = next(_calls)
                if n % 4:
                    headers[name] = f"{value[:200]}~{n}"
            return
