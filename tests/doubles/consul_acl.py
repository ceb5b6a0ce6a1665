"""Consul's ACL rules as a server enforces them, for the Consul double (and the Nomad double's template runner).

Read in ``acl/policy.go`` (the rule kinds and access levels), ``acl/policy_merger.go`` (a token's policies
merge per rule; for one name, ``deny`` beats ``write`` beats ``list`` beats ``read``: ``takesPrecedenceOver``)
and ``acl/policy_authorizer.go``:

* every named resource has exact rules (``key "a/b"``) and prefix rules (``key_prefix "a/"``) in one radix
  tree; ``getPolicy`` walks the name's path from the root: an exact rule on exactly the name wins, otherwise
  the longest prefix rule that is a prefix of the name decides (``key_prefix ""`` matches everything);
* ``enforce``: ``write`` grants read, list and write; ``list`` grants list and read; ``read`` grants read;
  ``deny`` denies; no matching rule falls to the default policy, ``deny`` here (``acl.default_policy``).

What each endpoint asks for is in ``agent/consul/kvs_endpoint.go`` (``kvsPreApply``: every KV write,
``acquire``/``release`` included, is ``key:write``; reads are filtered per key), ``session_endpoint.go``
(``session:write`` on the session's node) and ``agent/consul/acl.go`` (``aclFilter``: a health query keeps an
instance only when the token reads both its service and its node).

Refusals carry ``acl/errors.go``'s text: ``Permission denied: token with AccessorID '<id>' lacks permission
'key:write' on "<name>"`` (the anonymous token says ``anonymous token`` instead, and adds a hint).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import hcl2

#: acl.AnonymousTokenID
ANONYMOUS_ACCESSOR = "00000000-0000-0000-0000-000000000002"
#: Named resources: exact rule kind -> (resource name in errors, prefix rule kind). acl/policy.go PolicyRules.
NAMED = {"key": "key_prefix", "service": "service_prefix", "node": "node_prefix", "session": "session_prefix",
         "agent": "agent_prefix", "event": "event_prefix", "query": "query_prefix", "identity": "identity_prefix"}
#: Rules that are one access level for the whole cluster (acl = "read", operator = "write"...).
SCALAR = {"acl", "operator", "keyring", "mesh", "peering"}
ACCESS = ("deny", "read", "list", "write")
_PRECEDENCE = {"deny": 3, "write": 2, "list": 1, "read": 0}
# enforce(rule, required): which required levels each rule level grants
_GRANTS = {"write": {"read", "list", "write"}, "list": {"read", "list"}, "read": {"read"}, "deny": set()}


# Plain values: strings without their quotes, no comments, blocks as {label: body}.
_HCL = hcl2.SerializationOptions(strip_string_quotes=True, explicit_blocks=False, preserve_heredocs=False,
                                 with_comments=False)


class PolicyError(ValueError):
    """Rules Consul would refuse (``consul acl policy create`` fails with this message)."""


@dataclass
class Rules:
    """Merged rules: (resource, name) -> access, exact and prefix apart; scalar resources -> access."""

    exact: dict[tuple[str, str], str] = field(default_factory=dict)
    prefix: dict[tuple[str, str], str] = field(default_factory=dict)
    scalar: dict[str, str] = field(default_factory=dict)


def _stronger(a: str | None, b: str) -> str:
    return b if a is None or _PRECEDENCE[b] > _PRECEDENCE[a] else a


def parse_rules(text: str, into: Rules | None = None) -> Rules:
    """One policy's rules, merged into ``into`` (a token's rules so far) with Consul's precedence."""
    rules = into if into is not None else Rules()
    try:
        tree = hcl2.loads(text, serialization_options=_HCL)
    except Exception as exc:  # any parse failure: Consul refuses the policy
        raise PolicyError(f"Failed to parse ACL rules: {exc}") from None
    prefixes = {prefix: exact for exact, prefix in NAMED.items()}
    for kind, value in tree.items():
        if kind in SCALAR:
            level = str(value).strip('"')
            if level not in ACCESS:
                raise PolicyError(f"Invalid {kind} policy: {level!r}")
            rules.scalar[kind] = _stronger(rules.scalar.get(kind), level)
            continue
        if kind not in NAMED and kind not in prefixes:
            raise PolicyError(f"Failed to parse ACL rules: unknown rule {kind!r}")
        table, resource = (rules.exact, kind) if kind in NAMED else (rules.prefix, prefixes[kind])
        for entry in value if isinstance(value, list) else [value]:
            for name, body in (entry or {}).items():
                level = str((body or {}).get("policy", "")).strip('"') if isinstance(body, Mapping) else ""
                if level not in ACCESS:
                    raise PolicyError(f"Invalid {kind} policy: {kind} {name!r} policy {level!r}")
                key = (resource, str(name).strip('"'))
                table[key] = _stronger(table.get(key), level)
    return rules


def lookup(rules: Rules, resource: str, name: str) -> str | None:
    """policy_authorizer.go getPolicy: the exact rule on ``name``, else the longest prefix rule, else None."""
    exact = rules.exact.get((resource, name))
    if exact is not None:
        return exact
    best: tuple[int, str] | None = None
    for (kind, prefix), level in rules.prefix.items():
        if kind == resource and name.startswith(prefix) and (best is None or len(prefix) > best[0]):
            best = (len(prefix), level)
    return None if best is None else best[1]


class Authorizer:
    """What one token may do. ``management``: everything; otherwise its merged rules over default deny."""

    def __init__(self, policies: Iterable[str] = (), *, accessor_id: str = ANONYMOUS_ACCESSOR,
                 management: bool = False) -> None:
        self.accessor_id = accessor_id
        self.management = management
        self.rules = Rules()
        for text in policies:
            parse_rules(text, self.rules)

    def allowed(self, resource: str, name: str, access: str) -> bool:
        """Whether the token has ``resource:access`` on ``name`` (``access``: read, list or write)."""
        if self.management:
            return True
        level = self.rules.scalar.get(resource) if resource in SCALAR else lookup(self.rules, resource, name)
        return level is not None and access in _GRANTS[level]

    def denial(self, resource: str, name: str, access: str) -> str | None:
        """None when allowed, else the text of Consul's 403 (acl/errors.go PermissionDeniedError.Error)."""
        if self.allowed(resource, name, access):
            return None
        who = ("anonymous token" if self.accessor_id == ANONYMOUS_ACCESSOR
               else f"token with AccessorID '{self.accessor_id}'")
        text = f"Permission denied: {who} lacks permission '{resource}:{access}'"
        if name:
            text += f' on "{name}"'
        if self.accessor_id == ANONYMOUS_ACCESSOR:
            text += ". The anonymous token is used implicitly when a request does not specify a token."
        return text

    def key_write_prefix_denial(self, prefix: str) -> str | None:
        """KeyWritePrefix (a recursive delete): write on ``prefix`` and no rule under it that grants less."""
        denial = self.denial("key", prefix, "write")
        if denial is not None or self.management:
            return denial
        for (kind, name), level in [*self.rules.exact.items(), *self.rules.prefix.items()]:
            if kind == "key" and name.startswith(prefix) and level != "write":
                return Authorizer(accessor_id=self.accessor_id).denial("key", prefix, "write")
        return None


def accessor_of(secret: str) -> str:
    """A stable, made-up AccessorID for a token's SecretID (the accessor never reveals the secret)."""
    return str(uuid.uuid5(uuid.NAMESPACE_OID, f"consul-double-accessor:{secret}"))


def authorizers(management_token: str | None, policies: Mapping[str, list[str]] | None) -> dict[str, Any]:
    """SecretID -> :class:`Authorizer` for a double's tokens (the management one and the policy ones)."""
    found: dict[str, Authorizer] = {secret: Authorizer(texts, accessor_id=accessor_of(secret))
                                    for secret, texts in (policies or {}).items()}
    if management_token is not None:
        found[management_token] = Authorizer(accessor_id=accessor_of(management_token), management=True)
    return found
