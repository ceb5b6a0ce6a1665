"""Completeness of 10,000 artifacts under one prefix: one listing vs one request per task.

Run: ``.venv/bin/python bench/completeness.py [--n 10000] [--missing 0.1]``

Populates N artifacts' manifests (a fraction left missing) on the local store and on moto's
standalone S3 server, then checks all N tasks twice in the same run: the naive way (each task's
``exists()``: one manifest read per task) and caravan's way (``complete_many``: one listing per
prefix). Prints requests sent and wall time for each, and exits non-zero when ``complete_many``
answers wrongly or sends more than one listing (a page per 1,000 keys).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import luigi
from common import verdict

from caravan import ArtifactTask, complete_many, open_store
from caravan.artifacts import completion_index
from caravan.storage import clear_store_cache
from tests.servers import moto_s3

DAY = dt.date(2026, 11, 22)


class Cell(ArtifactTask):
    """One of many small artifacts under one family and date."""

    date = luigi.DateParameter()
    i = luigi.IntParameter()


def populate(tasks: list[Cell], missing: float) -> int:
    present = [t for n, t in enumerate(tasks) if (n % 100) >= missing * 100]

    def put(task: Cell) -> None:
        artifact = task.output()
        manifest = {"artifact_id": artifact.id, "files": {}, "attempt": "bench", "metrics": {}}
        artifact.store.write(artifact.manifest_key, json.dumps(manifest).encode())

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(put, present))
    return len(present)


def measure(root: str, n: int, missing: float) -> list[tuple[str, int, float, int]]:
    os.environ["CARAVAN_ARTIFACT_ROOT"] = root
    clear_store_cache()
    completion_index.forget()
    tasks = [Cell(date=DAY, i=i) for i in range(n)]
    expected = populate(tasks, missing)
    store = open_store(root)
    rows = []

    completion_index.forget()
    store.requests.clear()
    start = time.perf_counter()
    naive = sum(t.output().exists() for t in tasks)
    rows.append(("naive: exists() per task", sum(store.requests.values()), time.perf_counter() - start, naive))

    completion_index.forget()
    store.requests.clear()
    start = time.perf_counter()
    bulk = sum(complete_many(tasks).values())
    rows.append(("caravan: complete_many", sum(store.requests.values()), time.perf_counter() - start, bulk))

    if naive != expected or bulk != expected:
        raise SystemExit(f"wrong answer: expected {expected} complete, naive {naive}, bulk {bulk}")
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--missing", type=float, default=0.1, help="fraction of artifacts not published")
    args = parser.parse_args()
    results: list[tuple[str, list[tuple[str, int, float, int]]]] = []
    with tempfile.TemporaryDirectory() as tmp:
        results.append(("local", measure(f"{tmp}/artifacts", args.n, args.missing)))
    with moto_s3() as endpoint:
        import boto3

        os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench",
                          AWS_DEFAULT_REGION="us-east-1", AWS_ENDPOINT_URL_S3=endpoint)
        boto3.client("s3").create_bucket(Bucket="bench")
        results.append(("s3 (moto server)", measure("s3://bench/artifacts", args.n, args.missing)))

    print(f"\ncompleteness of {args.n} artifacts under one prefix ({args.missing:.0%} missing)\n")
    print(f"{'store':<18} {'method':<26} {'requests':>9} {'wall s':>8} {'complete':>9}")
    for store, rows in results:
        for method, requests, wall, complete in rows:
            print(f"{store:<18} {method:<26} {requests:>9} {wall:>8.3f} {complete:>9}")
        (_, naive_req, naive_s, _), (_, bulk_req, bulk_s, _) = rows
        print(f"{'':<18} {'ratio naive/caravan':<26} {naive_req / max(bulk_req, 1):>8.0f}x {naive_s / bulk_s:>7.1f}x")
    # One listing per prefix: S3 pages a listing by 1,000 keys, so that many pages at most, whatever n is.
    most = max(1, math.ceil(args.n / 1000))
    problems = [f"{store}: complete_many sent {rows[1][1]} requests (at most {most})"
                for store, rows in results if rows[1][1] > most]
    return verdict(f"complete_many: one listing per prefix, at most {most} requests for {args.n} tasks", problems)


if __name__ == "__main__":
    sys.exit(main())
