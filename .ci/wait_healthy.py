#!/usr/bin/env python3
"""Wait until a deployed caravan model server reports healthy: `python .ci/wait_healthy.py URL [--release TAG]`.

Polls URL/health (GET) until it answers 200 with {"status": "ok"}, then prints the model it serves and exits 0.
With --release, "healthy" also means that /health reports that release, --consecutive times in a row: behind a
load balancer, an old allocation of a rolling (canary) update still answers ok for a while.
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


def check(url: str, timeout_s: float, release: str | None = None) -> tuple[bool, str]:
    """(healthy, what the server said) for one GET of <url>/health."""
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/health", timeout=timeout_s) as response:  # noqa: S310
            body = json.loads(response.read().decode())
    except urllib.error.HTTPError as exc:
        return False, f"HTTP {exc.code}: {exc.read()[:300].decode(errors='replace')}"
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return False, f"{type(exc).__name__}: {exc}"
    if body.get("status") == "ok" and release and body.get("release") != release:
        return False, f"healthy, but release {body.get('release')!r} answered, not {release!r}"
    if body.get("status") == "ok":
        return True, f"serving model {body.get('model')} ({body.get('uri')}), release {body.get('release')}"
    return False, json.dumps(body)[:300]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", help="base URL of the model server, e.g. https://caravan-ranker.staging.example.com")
    parser.add_argument("--timeout-s", type=float, default=600.0, help="give up after this many seconds")
    parser.add_argument("--interval-s", type=float, default=5.0, help="seconds between two checks")
    parser.add_argument("--release", default=None, help="also wait until /health reports this release tag")
    parser.add_argument("--consecutive", type=int, default=5,
                        help="with --release: answers in a row that must report it")
    args = parser.parse_args(argv)
    if not args.url.startswith(("http://", "https://")):
        parser.error(f"url {args.url!r} must start with http:// or https://")
    if args.release is not None and not args.release:
        parser.error("--release is empty (is CI_COMMIT_TAG set?)")
    needed = max(1, args.consecutive) if args.release else 1
    deadline = time.monotonic() + args.timeout_s
    in_a_row = 0
    while True:
        healthy, said = check(args.url, timeout_s=min(10.0, args.timeout_s), release=args.release)
        in_a_row = in_a_row + 1 if healthy else 0
        if in_a_row >= needed:
            print(f"{args.url}: {said}")
            return 0
        if time.monotonic() >= deadline:
            print(f"{args.url} not healthy after {args.timeout_s:.0f}s; last answer: {said}", file=sys.stderr)
            return 1
        time.sleep(args.interval_s)


if __name__ == "__main__":
    sys.exit(main())
