"""Blocking reads: jobs, summaries, allocations, evaluations, logs and ``/v1/jobs/parse``."""

from __future__ import annotations

import base64
import copy
from collections.abc import Callable, Iterator
from typing import Any

from .._http import blocking_query
from .common import (
    LOG_FRAME,
    MAX_BLOCKING_S,
    ZERO_TIME,
    AllocRec,
    HTTPError,
    Reply,
    Request,
    alloc_terminal,
    go_json,
    parse_bool,
)
from .hcl import JobSpecError, canonicalize, hcl_to_job, parse_duration_ns, var_file_values


class Reads:
    """Blocking reads (a mixin of :class:`NomadDouble`)."""

    def _blocking(self, req: Request, query: Callable[[], tuple[Any, int, Any]]) -> tuple[Any, int]:
        """Run ``query`` (body, index, watch) under the lock; block while index <= ?index, up to ?wait."""
        min_index, wait_s = blocking_params(req.query)
        return blocking_query(self._cond, query, min_index, wait_s, self._closing.is_set)

    def _read(self, req: Request, query: Callable[[], tuple[Any, int]], missing: str = "",
              watch: Callable[[], Any] | None = None) -> Reply:
        """A blocking read: ``query`` gives (body, or None when missing, index) under the lock; ``watch``
        what the query depends on (default: the index of the object read), as Nomad's watch sets do."""
        def watched() -> tuple[Any, int, Any]:
            body, index = query()
            return body, index, watch() if watch else (index if body is not None else None)

        body, index = self._blocking(req, watched)
        if body is None:
            raise HTTPError(404, missing, index=index)
        return Reply(body, index)

    def _get_job(self, req: Request, ns: str, job_id: str) -> Reply:
        def query() -> tuple[Any, int]:
            rec = self._jobs.get((ns, job_id))
            return (copy.deepcopy(rec.job), rec.job["ModifyIndex"]) if rec else (None, self._tables["jobs"])

        return self._read(req, query, "job not found")

    def _get_summary(self, req: Request, ns: str, job_id: str) -> Reply:
        def query() -> tuple[Any, int]:
            rec = self._jobs.get((ns, job_id))
            return (self._summary(rec), rec.summary_index) if rec else (None, self._tables["job_summary"])

        return self._read(req, query, "job not found")

    def _get_job_allocs(self, req: Request, ns: str, job_id: str) -> Reply:
        include_all = parse_bool(req.query["all"], "all") if req.query.get("all") else False

        def allocs() -> list[AllocRec]:
            rec = self._jobs.get((ns, job_id))
            return [a for a in self._job_allocs((ns, job_id))
                    if include_all or rec is None or a.job["CreateIndex"] == rec.job["CreateIndex"]]

        return self._read(req, lambda: ([self._alloc_stub(a) for a in allocs()], self._tables["allocs"]),
                          watch=lambda: [(a.alloc["ID"], a.alloc["ModifyIndex"]) for a in allocs()])

    def _get_job_evals(self, req: Request, ns: str, job_id: str) -> Reply:
        return self._read(req, lambda: (copy.deepcopy(self._job_evals((ns, job_id))), self._tables["evals"]),
                          watch=lambda: [(e["ID"], e["ModifyIndex"]) for e in self._job_evals((ns, job_id))])

    def _list_jobs(self, req: Request, ns: str) -> Reply:
        if req.query.get("filter"):
            raise HTTPError(501, "filter expressions are not implemented by the Nomad double")
        prefix = req.query.get("prefix", "")
        with_meta = bool(req.query.get("meta")) and parse_bool(req.query["meta"], "meta")

        def query() -> tuple[Any, int]:
            stubs = [self._stub(rec, with_meta) for (job_ns, job_id), rec in sorted(self._jobs.items())
                     if (ns == "*" or job_ns == ns) and job_id.startswith(prefix)]
            return stubs, max(self._tables["jobs"], self._tables["job_summary"])

        return self._read(req, query)

    def _get_alloc(self, req: Request, alloc_id: str) -> Reply:
        def query() -> tuple[Any, int]:
            rec = self._allocs.get(alloc_id)
            if rec is None:
                return None, self._tables["allocs"]
            return {**copy.deepcopy(rec.alloc), "Job": copy.deepcopy(rec.job)}, rec.alloc["ModifyIndex"]

        return self._read(req, query, "alloc not found")

    def _get_eval(self, req: Request, eval_id: str) -> Reply:
        def query() -> tuple[Any, int]:
            ev = self._evals.get(eval_id)
            return (copy.deepcopy(ev), ev["ModifyIndex"]) if ev else (None, self._tables["evals"])

        return self._read(req, query, "eval not found")

    def _logs(self, req: Request, alloc_id: str) -> Reply:
        """``/v1/client/fs/logs/:alloc``: Nomad's checks in its order, then the bytes (plain or framed)."""
        q = req.query
        if not alloc_id:
            raise HTTPError(400, "must provide a valid alloc id")
        task = q.get("task", "")
        if not task:
            raise HTTPError(400, "must provide task name")
        follow = parse_bool(q["follow"], "follow") if q.get("follow") else False
        plain = parse_bool(q["plain"], "plain") if q.get("plain") else False
        kind = q.get("type", "")
        if kind not in ("stdout", "stderr"):
            raise HTTPError(400, "must provide log type (stdout/stderr)")
        origin = q.get("origin") or "start"
        if origin not in ("start", "end"):
            raise HTTPError(400, "origin must be start or end")
        try:
            offset = int(q.get("offset") or 0)
        except ValueError:
            text = f'error parsing offset: strconv.ParseInt: parsing "{q["offset"]}": invalid syntax'
            raise HTTPError(400, text) from None
        with self._cond:
            rec = self._allocs.get(alloc_id)
            if rec is None:
                raise HTTPError(404, f'Unknown allocation "{alloc_id}"')
            if task not in rec.tasks:
                raise HTTPError(400, f'unknown task name "{task}"')
            state = (rec.alloc["TaskStates"] or {}).get(task)
            if state is None or state["StartedAt"] == ZERO_TIME:
                raise HTTPError(404, f'task "{task}" not started yet. No logs available')
        path = rec.root / "alloc" / "logs" / f"{task}.{kind}.0"
        rel = f"alloc/logs/{task}.{kind}.0"

        def chunks(position: int) -> Iterator[tuple[int, bytes]]:
            data = path.read_bytes() if path.exists() else b""
            for start in range(position, len(data), LOG_FRAME):
                piece = data[start:start + LOG_FRAME]
                yield start + len(piece), piece

        size = path.stat().st_size if path.exists() else 0
        start = max(0, size - offset) if origin == "end" else min(offset, size)

        def encode(items: Iterator[tuple[int, bytes]]) -> bytes:
            if plain:
                return b"".join(piece for _, piece in items)
            return b"".join(go_json({"File": rel, "Offset": end, "Data": base64.b64encode(piece).decode()})
                            for end, piece in items)

        if not follow:
            return Reply(raw=encode(chunks(start)),
                         content_type="text/plain" if plain else "application/json")

        def stream(write: Callable[[bytes], None]) -> None:
            position = start
            while not self._closing.is_set():
                with self._cond:
                    finished = rec.tasks[task].exited.is_set() and alloc_terminal(rec.alloc)
                for end, piece in chunks(position):
                    write(encode(iter([(end, piece)])))
                    position = end
                if finished:
                    return
                with self._cond:
                    self._cond.wait(0.2)

        return Reply(stream=stream, content_type="text/plain" if plain else "application/json")

    def _parse(self, req: Request) -> Reply:
        body = self._decode(req)
        fields = {k.lower(): v for k, v in (body if isinstance(body, dict) else {}).items()}
        text = fields.get("jobhcl") or ""
        if not text.strip():
            raise HTTPError(400, "Job spec is empty")
        variables: dict[str, Any] = {}
        if fields.get("variables"):
            try:
                variables = var_file_values(fields["variables"])
            except Exception as exc:  # python-hcl2 raises lark's many exception types
                raise HTTPError(400, f"Failed to parse job: {exc}") from None
        try:
            job = hcl_to_job(text, variables)
        except JobSpecError as exc:
            raise HTTPError(400, str(exc)) from None
        return Reply(canonicalize(job) if fields.get("canonicalize") else job, read=False)


def blocking_params(query: dict[str, str]) -> tuple[int, float]:
    wait_s = MAX_BLOCKING_S
    if query.get("wait"):
        try:
            wait_s = parse_duration_ns(query["wait"]) / 1e9
        except ValueError:
            raise HTTPError(400, "Invalid wait time") from None
        wait_s = min(max(wait_s, 0.0), MAX_BLOCKING_S) or MAX_BLOCKING_S
    index = 0
    if query.get("index"):
        if not query["index"].isdigit():
            raise HTTPError(400, "Invalid index")
        index = int(query["index"])
    return index, wait_s
