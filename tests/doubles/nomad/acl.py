"""Nomad's ACL system as a server enforces it: policies, tokens, and the capability each endpoint checks.

Policies are parsed as ``acl/policy.go`` ``Parse`` does (``namespace`` and ``host_volume`` rules with a
``policy`` shorthand and/or ``capabilities``; an unknown capability is an error) and merged as ``acl/acl.go``
``NewACL`` merges a token's policies: capabilities add up per name, and ``deny`` clears a name's set and
wins over everything else given for it. A name is matched exactly first, then by the closest glob
(``findClosestMatchingGlob``: the glob with the fewest characters left to the wildcard).

:data:`ENDPOINTS` is the endpoint -> capability table, each entry citing the check it copies. The
``host_volume`` check of ``Job.Register`` (``nomad/job_endpoint.go`` ``doRegister``: a read-write host volume
needs ``mount-readwrite``, a read-only one ``mount-readonly`` or ``mount-readwrite``; a CSI or unknown volume
type is refused) is :meth:`ACL.check_volumes`.

Answers as the HTTP layer gives them: no permission is 403 ``Permission denied``, an unknown token 403
``ACL token not found`` (``command/agent/http.go``). A request without a token is the anonymous token, which
has no policy here (a bootstrapped cluster's anonymous token grants nothing until an operator gives it one).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import hcl2

from .common import HTTPError

# acl/policy.go
NAMESPACE_CAPABILITIES = frozenset({
    "deny", "list-jobs", "parse-job", "read-job", "submit-job", "dispatch-job", "read-logs", "read-fs",
    "alloc-exec", "alloc-node-exec", "alloc-lifecycle", "sentinel-override", "csi-register-plugin",
    "csi-write-volume", "csi-read-volume", "csi-list-volume", "csi-mount-volume", "host-volume-create",
    "host-volume-register", "host-volume-read", "host-volume-write", "host-volume-delete",
    "list-scaling-policies", "read-scaling-policy", "read-job-scaling", "scale-job", "submit-recommendation",
    "register-job", "revert-job", "deregister-job", "purge-job", "evaluate-job", "plan-job", "tag-job-version",
    "stable-job", "fail-deployment", "pause-deployment", "promote-deployment", "unblock-deployment",
    "cancel-deployment", "set-alloc-health-deployment", "gc-allocation", "pause-allocation",
    "force-periodic-job", "delete-service-registration",
})
HOST_VOLUME_CAPABILITIES = frozenset({"deny", "mount-readonly", "mount-readwrite"})

_READ = ("list-jobs", "parse-job", "read-job", "csi-list-volume", "csi-read-volume", "read-job-scaling",
         "list-scaling-policies", "read-scaling-policy", "host-volume-read")
_WRITE = (*_READ, "scale-job", "submit-job", "dispatch-job", "read-logs", "read-fs", "alloc-exec",
          "alloc-lifecycle", "csi-mount-volume", "csi-write-volume", "submit-recommendation", "host-volume-create")
# acl/policy.go expandNamespacePolicy / expandHostVolumePolicy
NAMESPACE_POLICIES: Mapping[str, tuple[str, ...]] = {
    "deny": ("deny",), "read": _READ, "write": _WRITE,
    "scale": ("list-scaling-policies", "read-scaling-policy", "read-job-scaling", "scale-job", "read-job",
              "submit-recommendation"),
}
HOST_VOLUME_POLICIES: Mapping[str, tuple[str, ...]] = {
    "deny": ("deny",), "read": ("mount-readonly",), "write": ("mount-readonly", "mount-readwrite"),
}
# Rules the double parses and ignores: no endpoint it serves checks them.
_OTHER_RULES = {"agent", "node", "operator", "quota", "plugin", "node_pool"}

PERMISSION_DENIED = "Permission denied"
TOKEN_NOT_FOUND = "ACL token not found"


# Plain values: strings without their quotes, no comments, blocks as {label: body}.
_HCL = hcl2.SerializationOptions(strip_string_quotes=True, explicit_blocks=False, preserve_heredocs=False,
                                 with_comments=False)


class PolicyError(ValueError):
    """A policy Nomad would refuse to store (``nomad acl policy apply`` fails with this message)."""


@dataclass
class Policy:
    """The rules of one policy: name -> capabilities, for namespaces and host volumes."""

    namespaces: dict[str, set[str]] = field(default_factory=dict)
    host_volumes: dict[str, set[str]] = field(default_factory=dict)


def _rules(tree: Mapping[str, Any], kind: str) -> Iterable[tuple[str, Mapping[str, Any]]]:
    for entry in tree.get(kind, []):
        for name, body in entry.items():
            yield str(name).strip('"'), body if isinstance(body, Mapping) else {}


def parse_policy(text: str) -> Policy:
    """A policy's namespace and host-volume rules, validated as ``acl/policy.go`` ``Parse`` does."""
    try:
        tree = hcl2.loads(text, serialization_options=_HCL)
    except Exception as exc:  # any parse failure: Nomad refuses the policy
        raise PolicyError(f"Failed to parse ACL Policy: {exc}") from None
    unknown = set(tree) - {"namespace", "host_volume"} - _OTHER_RULES
    if unknown:
        raise PolicyError(f"Failed to parse ACL Policy: unsupported rules {sorted(unknown)}")
    policy = Policy()
    for kind, valid, shorthands, into in (
            ("namespace", NAMESPACE_CAPABILITIES, NAMESPACE_POLICIES, policy.namespaces),
            ("host_volume", HOST_VOLUME_CAPABILITIES, HOST_VOLUME_POLICIES, policy.host_volumes)):
        for name, body in _rules(tree, kind):
            shorthand = str(body.get("policy", "")).strip('"')
            if shorthand and shorthand not in shorthands:
                raise PolicyError(f"Invalid {kind} policy: {kind} {name!r} policy {shorthand!r}")
            capabilities = [str(c).strip('"') for c in body.get("capabilities", [])]
            bad = [c for c in capabilities if c not in valid]
            if bad:
                raise PolicyError(f"Invalid {kind} capability '{bad[0]}': {kind} {name!r}")
            into.setdefault(name, set()).update([*capabilities, *shorthands.get(shorthand, ())])
    return policy


def _merge(target: dict[str, set[str]], rules: Mapping[str, set[str]]) -> None:
    """acl.go NewACL: capabilities add up; deny replaces a name's set and nothing is added after it."""
    for name, capabilities in rules.items():
        current = target.setdefault(name, set())
        if "deny" in current:
            continue
        if "deny" in capabilities:
            current.clear()
            current.add("deny")
        else:
            current.update(capabilities)


def glob_match(pattern: str, name: str) -> bool:
    """ryanuber/go-glob's Glob, which Nomad's ACLs use: ``*`` matches any run of characters, nothing else is
    special."""
    parts = pattern.split("*")
    if len(parts) == 1:
        return pattern == name
    if not name.startswith(parts[0]):
        return False
    position = len(parts[0])
    for part in parts[1:-1]:
        found = name.find(part, position)
        if found < 0:
            return False
        position = found + len(part)
    return name.endswith(parts[-1]) and len(name) - len(parts[-1]) >= position


def _lookup(rules: Mapping[str, set[str]], name: str) -> set[str] | None:
    """The set for ``name``: an exact rule, else the closest matching glob (acl.go findClosestMatchingGlob:
    the smallest ``len(name) - len(glob) + count("*")``, ties in the radix tree's, i.e. sorted, order)."""
    if name in rules:
        return rules[name]
    matches = sorted((len(name) - len(glob) + glob.count("*"), glob) for glob in rules
                     if "*" in glob and glob_match(glob, name))
    return rules[matches[0][1]] if matches else None


class ACL:
    """What one token may do: the merge of its policies, or everything for a management token."""

    def __init__(self, policies: Iterable[str] = (), *, management: bool = False) -> None:
        self.management = management
        self.namespaces: dict[str, set[str]] = {}
        self.host_volumes: dict[str, set[str]] = {}
        for text in policies:
            policy = parse_policy(text)
            _merge(self.namespaces, policy.namespaces)
            _merge(self.host_volumes, policy.host_volumes)

    def allow_namespace(self, namespace: str, *capabilities: str) -> bool:
        """``AllowNsOpAnyOf``: any of ``capabilities`` granted in ``namespace`` (deny grants none)."""
        if self.management:
            return True
        if namespace == "*":  # acl.go anyNamespaceAllowsOp: the all-namespaces sentinel of list endpoints
            return any("deny" not in granted and any(c in granted for c in capabilities)
                       for granted in self.namespaces.values())
        granted = _lookup(self.namespaces, namespace) or set()
        return "deny" not in granted and any(c in granted for c in capabilities)

    def allow_host_volume(self, volume: str, *capabilities: str) -> bool:
        """``AllowHostVolumeOperation`` for any of ``capabilities``."""
        if self.management:
            return True
        granted = _lookup(self.host_volumes, volume) or set()
        return "deny" not in granted and any(c in granted for c in capabilities)

    def check_volumes(self, job: Mapping[str, Any]) -> None:
        """``doRegister``'s volume checks for every group of ``job``; 403 on the first refusal."""
        for group in job.get("TaskGroups") or []:
            for volume in (group.get("Volumes") or {}).values():
                source = str(volume.get("Source") or "")
                if volume.get("Type") == "host":
                    needed = ("mount-readonly", "mount-readwrite") if volume.get("ReadOnly") else ("mount-readwrite",)
                    if not self.allow_host_volume(source, *needed):
                        raise HTTPError(403, PERMISSION_DENIED)
                elif volume.get("Type") == "csi":
                    if not self.allow_namespace(str(job.get("Namespace") or "default"), "csi-mount-volume"):
                        raise HTTPError(403, PERMISSION_DENIED)
                else:
                    raise HTTPError(403, PERMISSION_DENIED)


# (method or "*", path pattern) -> the capabilities of which any one is enough, and where Nomad checks them.
# Paths are matched after routing has stripped the job id's suffix (see routes.Routes.JOB_ROUTES).
ENDPOINTS: tuple[tuple[str, str, tuple[str, ...], str], ...] = (
    ("GET", r"/v1/jobs", ("list-jobs",), "nomad/job_endpoint.go Job.List"),
    ("PUT|POST", r"/v1/jobs", ("submit-job", "register-job"), "nomad/job_endpoint.go Job.Register"),
    ("PUT|POST", r"/v1/jobs/parse", ("parse-job", "submit-job"),
     "command/agent/job_endpoint.go JobsParseRequest"),
    ("GET", r"/v1/job/[^?]+", ("read-job",), "nomad/job_endpoint.go Job.GetJob"),
    ("PUT|POST", r"/v1/job/[^?]+", ("submit-job", "register-job"), "nomad/job_endpoint.go Job.Register"),
    ("DELETE", r"/v1/job/[^?]+", ("submit-job", "purge-job", "deregister-job"),
     "nomad/job_endpoint.go Job.Deregister (without ?purge; with it, deregister-job is not enough)"),
    ("PUT|POST", r"/v1/job/.+/dispatch", ("dispatch-job",), "nomad/job_endpoint.go Job.Dispatch"),
    ("PUT|POST", r"/v1/job/.+/periodic/force", ("dispatch-job", "submit-job", "force-periodic-job"),
     "nomad/periodic_endpoint.go Periodic.Force"),
    ("PUT|POST", r"/v1/job/.+/plan", ("submit-job", "plan-job"), "nomad/job_endpoint.go Job.Plan"),
    ("GET", r"/v1/job/.+/(allocations|evaluations|summary)", ("read-job",),
     "nomad/job_endpoint.go Job.Allocations / Job.Evaluations; job_summary_endpoint.go"),
    ("GET", r"/v1/evaluation/[^/]+(/allocations)?", ("read-job",),
     "nomad/eval_endpoint.go GetEval (request namespace and the eval's own)"),
    ("GET", r"/v1/allocation/[^/]+", ("read-job",), "nomad/alloc_endpoint.go GetAlloc (the alloc's namespace)"),
    ("GET", r"/v1/client/fs/logs/.+", ("read-logs", "read-fs"),
     "client/fs_endpoint.go logs (the alloc's namespace)"),
)
_SUFFIXES = ("/dispatch", "/periodic/force", "/plan", "/allocations", "/evaluations", "/summary")


def endpoint_capabilities(method: str, path: str, query: Mapping[str, str] | None = None) -> tuple[str, ...] | None:
    """The capabilities (any one suffices) Nomad checks for ``method path``; None for an endpoint that needs
    a management token here (``/v1/system/gc``) or none at all (``/v1/status/leader``)."""
    if path == "/v1/status/leader":
        return ()
    suffixed = path.startswith("/v1/job/") and path.endswith(_SUFFIXES)
    for methods, pattern, capabilities, _ in ENDPOINTS:
        if method not in methods.split("|") or not re.fullmatch(pattern, path):
            continue
        if pattern == r"/v1/job/[^?]+" and suffixed:
            continue  # a job sub-resource, matched by its own row
        if method == "DELETE" and (query or {}).get("purge", "").lower() in ("1", "t", "true"):
            return ("submit-job", "purge-job")
        return capabilities
    return None


class ACLEnforcer:
    """The ACL check of every request (a mixin of :class:`NomadDouble`): token -> :class:`ACL`."""

    acl_token: str | None
    acl_policies: dict[str, list[str]] | None
    _acls: dict[str, ACL]

    def _acl_setup(self) -> None:
        self._acls = {secret: ACL(texts) for secret, texts in (self.acl_policies or {}).items()}
        if self.acl_token is not None:
            self._acls[self.acl_token] = ACL(management=True)

    @property
    def acl_enabled(self) -> bool:
        return self.acl_token is not None or self.acl_policies is not None

    def _resolve(self, headers: Any) -> ACL:
        """The request's ACL: its ``X-Nomad-Token`` (or ``Authorization: Bearer``) token, else anonymous."""
        if not self.acl_enabled:
            return ACL(management=True)
        token = headers.get("X-Nomad-Token") or ""
        auth = headers.get("Authorization") or ""
        if not token and auth.startswith("Bearer "):
            token = auth[len("Bearer "):]
        if not token:
            return ACL()  # anonymous: no policy
        found = self._acls.get(token)
        if found is None:
            raise HTTPError(403, TOKEN_NOT_FOUND)
        return found

    def _authorize(self, req: Any, namespaces: set[str]) -> ACL:
        """403 unless the request's token has one of its endpoint's capabilities in every one of
        ``namespaces``. Register is checked by :meth:`_authorize_register` once the job's namespace is known."""
        acl = self._resolve(req.headers)
        if acl.management:
            return acl
        capabilities = endpoint_capabilities(req.method, req.path, req.query)
        if capabilities is None:
            raise HTTPError(403, PERMISSION_DENIED)  # management-only here (system GC, anything unlisted)
        if not capabilities or "register-job" in capabilities:
            return acl
        if not all(acl.allow_namespace(ns, *capabilities) for ns in namespaces):
            raise HTTPError(403, PERMISSION_DENIED)
        return acl

    def _authorize_register(self, req: Any, job: Mapping[str, Any], namespace: str) -> None:
        """``doRegister``: submit-job (or register-job) in the namespace, then every volume's mount capability."""
        acl = self._resolve(req.headers)
        if not acl.allow_namespace(namespace, "submit-job", "register-job"):
            raise HTTPError(403, PERMISSION_DENIED)
        acl.check_volumes(job)
