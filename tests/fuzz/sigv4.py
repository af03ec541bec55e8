"""SigV4 for requests sent to Tether's management API, as API Gateway's IAM authorization
checks them: service `execute-api`, region us-east-1, and the local front's credentials
(access key `testing`, secret `testing`, the emulator's fake ones).

`SigV4` is a `requests` auth: `requests` calls it with the request exactly as it is about to
be sent (final URL, method, body, headers), and botocore's SigV4Auth signs that.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, quote, urlsplit, urlunsplit

import requests
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

ACCESS_KEY = "testing"
SECRET_KEY = "testing"
REGION = "us-east-1"
SERVICE = "execute-api"

# Left unsigned, as AWS's SDKs leave them: transport details a proxy may change, and the
# signature's own headers. Every other header is signed when its value is plain printable
# ASCII (a fuzzed value that is not can only be sent unsigned: SigV4 has no form for it).
UNSIGNED = {
    "authorization",
    "x-amz-date",
    "x-amz-security-token",
    "user-agent",
    "accept",
    "accept-encoding",
    "connection",
    "content-length",
    "expect",
}


def _printable(value: object) -> bool:
    return isinstance(value, str) and all(0x20 <= ord(c) < 0x7F for c in value)


def canonical_query(url: str) -> str:
    """`url` with its query encoded the way SigV4 canonicalises one (RFC 3986, `%20` for a
    space, `-_.~` left as they are). The server decodes it to the same name/value pairs, and
    both sides then agree on the canonical query whatever characters a fuzzer put in it:
    `requests` writes a space as `+`, which the server reads as a space but SigV4 as `%2B`."""
    parts = urlsplit(url)
    if not parts.query:
        return url
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    query = "&".join(f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in pairs)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, parts.fragment))


class SigV4(requests.auth.AuthBase):
    def __init__(self) -> None:
        self.signer = SigV4Auth(Credentials(ACCESS_KEY, SECRET_KEY), SERVICE, REGION)

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.url = canonical_query(request.url)
        body = request.body or b""
        if isinstance(body, str):
            body = body.encode("utf-8")
        headers = {
            name: value
            for name, value in request.headers.items()
            if name.lower() not in UNSIGNED and _printable(value)
        }
        signable = AWSRequest(method=request.method, url=request.url, data=body, headers=headers)
        self.signer.add_auth(signable)  # adds X-Amz-Date, signs host too
        request.headers["X-Amz-Date"] = signable.headers["X-Amz-Date"]
        request.headers["Authorization"] = signable.headers["Authorization"]
        return request
