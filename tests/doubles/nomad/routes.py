"""HTTP: the request handler, routing and the ACL check (``command/agent/http.go``)."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from typing import Any, ClassVar
from urllib.parse import parse_qsl, unquote, urlsplit

from .._http import index_headers, shutdown
from .common import FIRST_INDEX, JOB_SUFFIXES, LEADER, REGION, HTTPError, Reply, Request, go_json, parse_bool
from .gc import FORCE_GC_THRESHOLD_S
from .hcl import JobSpecError
from .nodes import node_stub


class Routes:
    """HTTP routing (a mixin of :class:`NomadDouble`)."""

    # /v1/job/:id<suffix> -> (methods, handler(req, namespace, job id)). A new endpoint is one entry here
    # (its suffix must be in JOB_SUFFIXES, which splits the id from the suffix) and one method.
    JOB_ROUTES: ClassVar[dict[str, tuple[tuple[str, ...], str]]] = {
        "/dispatch": (("PUT", "POST"), "_dispatch"),
        "/periodic/force": (("PUT", "POST"), "_force_periodic"),
        "/allocations": (("GET",), "_get_job_allocs"),
        "/evaluations": (("GET",), "_get_job_evals"),
        "/summary": (("GET",), "_get_summary"),
        "/plan": (("PUT", "POST"), "_plan"),  # plan.py
    }

    def _decode(self, req: Request) -> Any:
        if not req.body:
            raise HTTPError(400, "Request body is empty")
        text = req.body.decode("utf-8", errors="replace")
        try:
            return json.JSONDecoder().raw_decode(text.lstrip())[0]
        except json.JSONDecodeError as exc:
            rest = text.lstrip()
            if exc.pos >= len(rest):
                raise HTTPError(400, "unexpected EOF") from None
            text = f"invalid character {rest[exc.pos]!r} looking for beginning of value"
            raise HTTPError(400, text) from None

    def handle(self, method: str, raw_path: str, headers: Any,
               body: bytes) -> tuple[int, dict[str, str], Reply]:
        """Answer one request: (status, extra headers, reply); errors become text/plain replies."""
        self.requests.append((method, raw_path))
        parts = urlsplit(raw_path)
        query = dict(reversed(parse_qsl(parts.query, keep_blank_values=True)))  # the first value wins
        req = Request(method, unquote(parts.path), query, headers, body)
        with self._cond:
            self.stats["requests"] += 1
            if method == "DELETE" and req.path.startswith("/v1/job/"):
                self.stats["stops"] += 1
        lost = self._no_leader_reply()
        if lost is not None:
            return 500, {}, lost
        try:
            reply = self._route(req)
            if req.ambiguous:  # applied, but the leader went away before the answer
                return 500, {}, self._no_leader_reply(force=True) or Reply(drop=True)
        except HTTPError as exc:
            extra = {} if exc.index is None else read_headers(exc.index)
            return exc.status, extra, Reply(raw=exc.reason.encode(), content_type="text/plain; charset=utf-8")
        except JobSpecError as exc:
            return 400, {}, Reply(raw=str(exc).encode(), content_type="text/plain; charset=utf-8")
        extra = {}
        if reply.index is not None:
            extra = read_headers(reply.index) if reply.read else {"X-Nomad-Index": str(max(1, reply.index))}
        if reply.raw is None and reply.stream is None:
            # http.go wrap: ?pretty (any value but "0") indents
            reply.raw = go_json(reply.body, pretty="pretty" in req.query and req.query["pretty"] != "0")
        return 200, extra, reply

    def _route(self, req: Request) -> Reply:
        path, method = req.path, req.method
        if path == "/v1/status/leader":
            allow_methods(method, "GET")
            return Reply(LEADER, index=None)
        ns = req.query.get("namespace") or "default"
        self._authorize(req, self._acl_namespaces(path, ns))  # acl.py
        if req.query.get("region") not in (None, "", REGION):
            raise HTTPError(500, "No path to region")
        if path == "/v1/jobs":
            if allow_methods(method, "GET", "PUT", "POST") == "GET":
                return self._list_jobs(req, ns)
            return self._register_request(req, None)
        if path == "/v1/jobs/parse":
            allow_methods(method, "PUT", "POST")
            return self._parse(req)
        if path.startswith("/v1/job/"):
            return self._route_job(req, ns, path[len("/v1/job/"):])
        if path == "/v1/nodes":  # node:read (nomad/node_endpoint.go List): under ACLs, a management token here
            allow_methods(method, "GET")
            resources = parse_bool(req.query["resources"], "resources") if req.query.get("resources") else False
            with self._cond:
                return Reply([node_stub(n, resources) for n in self._nodes], FIRST_INDEX)
        if path.startswith("/v1/allocation/"):
            alloc_id = path[len("/v1/allocation/"):]
            if "/" in alloc_id:
                raise HTTPError(501, f"{path} is not implemented by the Nomad double")
            allow_methods(method, "GET")
            return self._get_alloc(req, alloc_id)
        if path.startswith("/v1/evaluation/"):
            eval_id = path[len("/v1/evaluation/"):]
            allow_methods(method, "GET")
            if eval_id.endswith("/allocations"):
                eval_id = eval_id[: -len("/allocations")]
                with self._cond:
                    mine = (a for a in self._allocs.values() if a.alloc["EvalID"] == eval_id)
                    stubs = [self._alloc_stub(a) for a in mine]
                    return Reply(stubs, self._tables["allocs"])
            return self._get_eval(req, eval_id)
        if path == "/v1/system/gc":
            allow_methods(method, "PUT")
            self.gc(FORCE_GC_THRESHOLD_S)
            return Reply(raw=b"", index=None)
        if path.startswith("/v1/client/fs/logs/"):
            allow_methods(method, "GET")
            return self._logs(req, path[len("/v1/client/fs/logs/"):])
        raise HTTPError(404, "404 page not found\n")

    def _route_job(self, req: Request, ns: str, rest: str) -> Reply:
        suffix = next((s for s in JOB_SUFFIXES if rest.endswith(s) and len(rest) > len(s)), "")
        job_id, method = rest[: len(rest) - len(suffix)], req.method
        if suffix == "":
            verb = allow_methods(method, "GET", "PUT", "POST", "DELETE")
            if verb == "GET":
                return self._get_job(req, ns, job_id)
            if verb == "DELETE":
                purge = parse_bool(req.query["purge"], "purge") if req.query.get("purge") else False
                return self._deregister(ns, job_id, purge)
            return self._register_request(req, job_id)
        route = self.JOB_ROUTES.get(suffix)
        if route is None:
            allow_methods(method, "GET")
            raise HTTPError(501, f"/v1/job/:id{suffix} is not implemented by the Nomad double")
        allow_methods(method, *route[0])
        handler: Callable[[Request, str, str], Reply] = getattr(self, route[1])
        return handler(req, ns, job_id)

    def _register_request(self, req: Request, path_id: str | None) -> Reply:
        body = self._decode(req)
        fields = {k.lower(): v for k, v in (body if isinstance(body, dict) else {}).items()}
        job = fields.get("job")
        if not isinstance(job, dict):
            raise HTTPError(400, "Job must be specified")
        if not job.get("ID"):
            raise HTTPError(400, "Job ID hasn't been provided")
        if path_id is not None and job["ID"] != path_id:
            raise HTTPError(400, "Job ID does not match name")
        namespace = req.query.get("namespace") or fields.get("namespace") or job.get("Namespace") or "default"
        self._authorize_register(req, job, namespace)  # acl.py
        enforce = fields.get("jobmodifyindex", 0) if fields.get("enforceindex") else None
        reply = self._register(copy.deepcopy(job), namespace, enforce)
        return Reply(reply, index=reply["Index"], read=False)

    def _acl_namespaces(self, path: str, ns: str) -> set[str]:
        """The namespaces an ACL check covers: an allocation's own (instead of the request's) for allocation
        reads and logs, an evaluation's own as well as the request's (alloc_endpoint.go GetAlloc,
        client/fs_endpoint.go, eval_endpoint.go GetEval); the request's for everything else."""
        with self._cond:
            for prefix in ("/v1/allocation/", "/v1/client/fs/logs/"):
                if path.startswith(prefix):
                    rec = self._allocs.get(path[len(prefix):])
                    return {str(rec.alloc.get("Namespace") or ns) if rec is not None else ns}
            if path.startswith("/v1/evaluation/"):
                found = self._evals.get(path[len("/v1/evaluation/"):].removesuffix("/allocations"))
                return {ns, str(found.get("Namespace") or ns) if found is not None else ns}
        return {ns}


def allow_methods(method: str, *allowed: str) -> str:
    if method not in allowed:
        raise HTTPError(405, "Invalid method")
    return method


def read_headers(index: int) -> dict[str, str]:
    return index_headers("Nomad", index)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Go's net/http (Nomad) sets TCP_NODELAY; without it, headers and body in two writes meet
    # delayed ACKs and every response waits ~40 ms.
    disable_nagle_algorithm = True

    def _serve(self) -> None:
        double: Any = self.server.double  # type: ignore[attr-defined]
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        status, extra, reply = double.handle(self.command, self.path, self.headers, body)
        if reply.drop:  # the agent goes away: no status line, the socket just closes
            self.close_connection = True
            shutdown(self.connection)
            return
        hook = double.response_hook

        def sent(data: bytes) -> None:
            if hook is not None:
                hook(self.command, self.path, status, data)

        self.send_response(status)
        self.send_header("Content-Type", reply.content_type)
        for name, value in extra.items():
            self.send_header(name, value)
        if reply.stream is not None:
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True
            try:
                reply.stream(lambda data: (sent(data), self.wfile.write(data), self.wfile.flush()))
            except (BrokenPipeError, ConnectionResetError):
                pass
            return
        data = reply.raw or b""
        sent(data)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_PUT = do_POST = do_DELETE = do_PATCH = _serve  # noqa: N815 - the stdlib's naming

    def log_message(self, format: str, *args: Any) -> None:
        pass
