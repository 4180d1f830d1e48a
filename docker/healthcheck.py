"""Docker health check of the aesemo backend: exit 0 when GET /health answers {"status": "UP"}.

Sends the service's own Basic credentials when BASIC_AUTH_USER is set (the service then asks for
them on every endpoint, /health included). Standard library only; used by backend.Dockerfile's
HEALTHCHECK and compose.yaml. Usage: aesemo-healthcheck [URL] (default http://127.0.0.1:9090/health).
"""
from __future__ import annotations

import base64
import json
import os
import sys
import urllib.request


def main(argv: list[str]) -> int:
    url = argv[1] if len(argv) > 1 else "http://127.0.0.1:9090/health"
    request = urllib.request.Request(url)
    user = os.environ.get("BASIC_AUTH_USER")
    if user:
        pair = f"{user}:{os.environ.get('BASIC_AUTH_PASS', '')}".encode()
        request.add_header("Authorization", "Basic " + base64.b64encode(pair).decode())
    try:
        # no proxies: a proxy set in the container's environment must not see this request
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(request, timeout=5) as response:
            body = json.load(response)
    except Exception as exc:  # any failure is "unhealthy"; say which
        print(f"aesemo-healthcheck: {url}: {exc}", file=sys.stderr)
        return 1
    if body.get("status") != "UP":
        print(f"aesemo-healthcheck: {url}: {body}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
