#!/usr/bin/env python3
"""Wait until a deployed caravan model server reports healthy: `python .ci/wait_healthy.py URL [--timeout-s N]`.

Polls URL/health (GET) until it answers 200 with {"status": "ok"}, then prints the model it serves and exits 0.
Exits 1 when the timeout passes first, printing the last answer. Standard library only, so that a CI job can
run it before installing anything.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.request


def check(url: str, timeout_s: float) -> tuple[bool, str]:
    """(healthy, what the server said) for one GET of <url>/health."""
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/health", timeout=timeout_s) as response:  # noqa: S310
            body = json.loads(response.read().decode())
    except urllib.error.HTTPError as exc:
        return False, f"HTTP {exc.code}: {exc.read()[:300].decode(errors='replace')}"
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return False, f"{type(exc).__name__}: {exc}"
    if body.get("status") == "ok":
        return True, f"serving model {body.get('model')} ({body.get('uri')})"
    return False, json.dumps(body)[:300]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", help="base URL of the model server, e.g. https://caravan-ranker.staging.example.com")
    parser.add_argument("--timeout-s", type=float, default=600.0, help="give up after this many seconds")
    parser.add_argument("--interval-s", type=float, default=5.0, help="seconds between two checks")
    args = parser.parse_args(argv)
    if not args.url.startswith(("http://", "https://")):
        parser.error(f"url {args.url!r} must start with http:// or https://")
    deadline = time.monotonic() + args.timeout_s
    while True:
        healthy, said = check(args.url, timeout_s=min(10.0, args.timeout_s))
        if healthy:
            print(f"{args.url}: {said}")
            return 0
        if time.monotonic() >= deadline:
            print(f"{args.url} not healthy after {args.timeout_s:.0f}s; last answer: {said}", file=sys.stderr)
            return 1
        time.sleep(args.interval_s)


if __name__ == "__main__":
    sys.exit(main())
