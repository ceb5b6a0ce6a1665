"""The language of Nomad's ``template`` block (consul-template on Go's text/template), as far as caravan uses it.

The Nomad double's client renders task templates with this module. Parsing follows text/template: plain
text, ``{{ ... }}`` actions with configurable delimiters, ``{{-``/``-}}`` trimming (the marker needs
whitespace beside it), ``{{/* comments */}}``, pipelines (``x | f``), parentheses, string, raw string,
number, bool and nil literals, ``.`` and field chains (``.Data.data.password``, ``(index . 0).Port``), and
``with``/``if`` ... ``else`` [``with``/``if``] ... ``end``. Functions: ``secret`` (a Vault read), ``env``
(the task's environment), ``key``, ``keyOrDefault``, ``keyExists`` (Consul KV), ``service`` (the healthy
instances of a Consul service, as ``*dependency.HealthService`` values) and ``index``. Anything
else (``range``, variables, ``printf``, ``toJSON``...) is refused while parsing, before any
data is read, with an :class:`UnsupportedAction` that names it: a template never renders silently wrong.

Execution keeps text/template's rules that matter for secrets: a missing map key prints ``<no value>``,
or fails with "map has no entry for key" when the template sets ``error_on_missing_key``
(``missingkey=error``); ``index`` of a missing key gives a nil that ``with`` skips whatever that option
says; a JSON null prints ``<nil>``. Error messages name paths, keys and fields, never a value.

:func:`parse_env` reads back an ``env = true`` template the way Nomad does (hashicorp/go-envparse): ``KEY=value``
lines, an optional ``export`` prefix, unquoted, "double quoted" (escapes ``\\"`` ``\\\\`` ``\\n`` ``\\t``) and
'single quoted' parts, ``#`` comments; blank lines and comment lines are skipped.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

SUPPORTED_FUNCTIONS = ("env", "index", "key", "keyExists", "keyOrDefault", "secret", "service")
_UNSUPPORTED_KEYWORDS = ("range", "define", "template", "block", "break", "continue")
_TRIM = " \t\r\n"
_TOKEN = re.compile(r"""
    (?P<ws>\s+)
  | (?P<string>"(?:[^"\\\n]|\\.)*")
  | (?P<raw>`[^`]*`)
  | (?P<char>'(?:[^'\\\n]|\\.)*')
  | (?P<number>[-+]?(?:0[xX][0-9a-fA-F_]+|\d[\d_]*(?:\.\d*)?(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?))
  | (?P<field>(?:\.[A-Za-z_][A-Za-z0-9_]*)+)
  | (?P<dot>\.)
  | (?P<variable>\$[A-Za-z0-9_]*)
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<declare>:?=)
  | (?P<pipe>\|)
  | (?P<lparen>\()
  | (?P<rparen>\))
  | (?P<comma>,)
""", re.X)
_ESCAPES = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v", "\\": "\\", '"': '"'}
_ENV_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class TemplateError(Exception):
    """A template that does not parse or execute; Nomad fails the task with "Template failed: <this>"."""


class UnsupportedAction(TemplateError):
    """Valid consul-template that this renderer does not implement; the message names the action."""


class SourceError(Exception):
    """A data source could not answer (no Vault, forbidden, unreachable); ``retry`` if asking again may help."""

    def __init__(self, reason: str, retry: bool = True) -> None:
        super().__init__(reason)
        self.reason, self.retry = reason, retry


class MissingDependency(Exception):
    """Data a template waits for: Nomad shows "Missing: <dependency>" and retries, then fails the task."""

    def __init__(self, dependency: str, reason: str, retry: bool = True) -> None:
        super().__init__(f"{dependency}: {reason}")
        self.dependency, self.reason, self.retry = dependency, reason, retry


class EnvParseError(ValueError):
    """An ``env = true`` template whose output is not an environment file (go-envparse's "error on line N")."""


@dataclass(frozen=True)
class Struct:
    """A Go struct value (consul-template's ``*dependency.Secret``): an unknown field is an error, not a miss."""

    type_name: str
    fields: Mapping[str, Any]


@dataclass
class Sources:
    """Where a template's data comes from. Readers return None for "does not exist" and raise SourceError."""

    env: Mapping[str, str] = field(default_factory=dict)
    secret: Callable[[str], Mapping[str, Any] | None] | None = None  # Vault path -> the read's JSON response
    key: Callable[[str], str | None] | None = None  # Consul KV key -> its value
    # Consul service name -> its passing instances (GET /v1/health/service/:name?passing entries)
    service: Callable[[str], list[Mapping[str, Any]]] | None = None


class _NoValue:
    """text/template's invalid reflect.Value: what a missing map key yields under ``missingkey=default``."""

    def __repr__(self) -> str:
        return "<no value>"


NO_VALUE = _NoValue()
_NOTHING = object()  # no piped value


# -- the parse tree ------------------------------------------------------------------------------------------

@dataclass
class _Lit:
    value: Any
    src: str
    pos: int


@dataclass
class _Dot:
    src: str
    pos: int


@dataclass
class _Field:
    base: Any  # an operand, or None for the dot
    names: tuple[str, ...]
    src: str
    pos: int


@dataclass
class _Fn:
    name: str
    src: str
    pos: int


@dataclass
class _Sub:
    pipe: _Pipe
    src: str
    pos: int


@dataclass
class _Command:
    operands: list[Any]
    src: str
    pos: int


@dataclass
class _Pipe:
    commands: list[_Command]


@dataclass
class _Print:
    pipe: _Pipe


@dataclass
class _Branch:
    kind: str  # "with" or "if"
    pipe: _Pipe
    body: list[Any] = field(default_factory=list)
    orelse: list[Any] = field(default_factory=list)
    in_else: bool = False


@dataclass
class Template:
    """A parsed template: its name (the destination, in messages), source text and nodes."""

    name: str
    text: str
    nodes: list[Any]


# -- lexing and parsing --------------------------------------------------------------------------------------

def _position(text: str, offset: int) -> str:
    line = text.count("\n", 0, offset) + 1
    return f"{line}:{offset - (text.rfind(chr(10), 0, offset) + 1)}"


class _Parser:
    def __init__(self, text: str, name: str, left: str, right: str) -> None:
        if not left or not right:
            raise TemplateError(f"template: {name}: empty delimiter")
        self.text, self.name, self.left, self.right = text, name, left, right

    def fail(self, offset: int, message: str, kind: type[TemplateError] = TemplateError) -> TemplateError:
        return kind(f"template: {self.name}:{_position(self.text, offset)}: {message}")

    def parse(self) -> Template:
        root: list[Any] = []
        stack: list[_Branch] = []

        def target() -> list[Any]:
            if not stack:
                return root
            top = stack[-1]
            return top.orelse if top.in_else else top.body

        pos = 0
        text, left, right = self.text, self.left, self.right
        while True:
            start = text.find(left, pos)
            if start < 0:
                if text[pos:]:
                    target().append(text[pos:])
                break
            chunk = text[pos:start]
            inner_start = start + len(left)
            if text.startswith("-", inner_start) and text[inner_start + 1:inner_start + 2] in tuple(_TRIM):
                chunk = chunk.rstrip(_TRIM)
                inner_start += 1
            if chunk:
                target().append(chunk)
            end = self._close(inner_start)
            inner = text[inner_start:end]
            pos = end + len(right)
            if len(inner) >= 2 and inner[-1] == "-" and inner[-2] in _TRIM:
                inner = inner[:-1]
                while pos < len(text) and text[pos] in _TRIM:
                    pos += 1
            self._action(inner, inner_start, stack, target)
        if stack:
            raise self.fail(len(text), f"unexpected EOF: {{{{ {stack[-1].kind} }}}} has no {{{{ end }}}}")
        return Template(self.name, text, root)

    def _close(self, pos: int) -> int:
        """Where the action starting at ``pos`` ends: its right delimiter, outside quotes and comments."""
        text = self.text
        i = pos
        while i < len(text):
            if text.startswith(self.right, i):
                return i
            char = text[i]
            if text.startswith("/*", i):
                close = text.find("*/", i + 2)
                if close < 0:
                    raise self.fail(i, "unclosed comment")
                i = close + 2
                continue
            if char in "\"'":
                j = i + 1
                while j < len(text) and text[j] != char:
                    if text[j] == "\n":
                        raise self.fail(i, "unterminated quoted string")
                    j += 2 if text[j] == "\\" else 1
                if j >= len(text):
                    raise self.fail(i, "unterminated quoted string")
                i = j + 1
                continue
            if char == "`":
                j = text.find("`", i + 1)
                if j < 0:
                    raise self.fail(i, "unterminated raw quoted string")
                i = j + 1
                continue
            i += 1
        raise self.fail(pos, "unclosed action")

    def _action(self, inner: str, offset: int, stack: list[_Branch], target: Callable[[], list[Any]]) -> None:
        stripped = inner.strip(_TRIM)
        if stripped.startswith("/*"):
            if not stripped.endswith("*/"):
                raise self.fail(offset, "comment ends before closing delimiter")
            return
        tokens = self._tokens(inner, offset)
        if not tokens:
            raise self.fail(offset, "missing value for command")
        kind, word, where, _ = tokens[0]
        if kind == "ident" and word in _UNSUPPORTED_KEYWORDS:
            raise self.fail(where, f"{{{{ {word} }}}} is not supported by the Nomad double's template renderer",
                            UnsupportedAction)
        if kind == "ident" and word in ("with", "if"):
            branch = _Branch(word, _ActionParser(self, tokens[1:], where).whole())
            target().append(branch)
            stack.append(branch)
            return
        if kind == "ident" and word == "else":
            if not stack or stack[-1].in_else:
                raise self.fail(where, "unexpected {{ else }}")
            top = stack[-1]
            top.in_else = True
            if len(tokens) > 1:
                kind2, word2, where2, _ = tokens[1]
                if kind2 != "ident" or word2 not in ("with", "if"):
                    raise self.fail(where2, "unexpected token after {{ else }}")
                chained = _Branch(word2, _ActionParser(self, tokens[2:], where2).whole())
                top.orelse.append(chained)
                stack[-1] = chained  # one {{ end }} closes the whole chain
            return
        if kind == "ident" and word == "end":
            if len(tokens) > 1:
                raise self.fail(tokens[1][2], "unexpected token in {{ end }}")
            if not stack:
                raise self.fail(where, "unexpected {{ end }}")
            stack.pop()
            return
        target().append(_Print(_ActionParser(self, tokens, where).whole()))

    def _tokens(self, inner: str, offset: int) -> list[tuple[str, str, int, int]]:
        tokens = []
        pos = 0
        while pos < len(inner):
            match = _TOKEN.match(inner, pos)
            if match is None:
                raise self.fail(offset + pos, f"unexpected {inner[pos]!r} in command")
            kind = match.lastgroup or ""
            if kind != "ws":
                tokens.append((kind, match.group(), offset + pos, offset + match.end()))
            pos = match.end()
        return tokens


class _ActionParser:
    """Recursive descent over one action's tokens: pipeline := command ('|' command)*."""

    def __init__(self, parser: _Parser, tokens: list[tuple[str, str, int, int]], where: int) -> None:
        self.parser, self.tokens, self.i, self.where = parser, tokens, 0, where

    def peek(self) -> tuple[str, str, int, int] | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def whole(self) -> _Pipe:
        if not self.tokens:
            raise self.parser.fail(self.where, "missing value for command")
        pipe = self.pipeline()
        extra = self.peek()
        if extra is not None:
            raise self.parser.fail(extra[2], f"unexpected {extra[1]!r} in command")
        return pipe

    def pipeline(self) -> _Pipe:
        commands = [self.command()]
        while (token := self.peek()) is not None and token[0] == "pipe":
            self.i += 1
            commands.append(self.command())
        return _Pipe(commands)

    def command(self) -> _Command:
        operands = []
        start = self.peek()
        while (token := self.peek()) is not None and token[0] not in ("pipe", "rparen"):
            operands.append(self.operand())
        if not operands or start is None:
            where = start[2] if start else self.where
            raise self.parser.fail(where, "missing value for command")
        end = self.tokens[self.i - 1][3]
        return _Command(operands, self.parser.text[start[2]:end], start[2])

    def operand(self) -> Any:
        kind, text, where, end = self.tokens[self.i]
        self.i += 1
        fail = self.parser.fail
        node: Any
        if kind == "string":
            node = _Lit(_unquote(text, lambda m: fail(where, m)), text, where)
        elif kind == "raw":
            node = _Lit(text[1:-1], text, where)
        elif kind == "number":
            node = _Lit(_number(text, lambda m: fail(where, m)), text, where)
        elif kind == "field":
            node = _Field(None, tuple(text[1:].split(".")), text, where)
        elif kind == "dot":
            node = _Dot(text, where)
        elif kind == "ident":
            if text in ("true", "false"):
                node = _Lit(text == "true", text, where)
            elif text == "nil":
                node = _Lit(None, text, where)
            elif text in ("with", "if", "else", "end", *_UNSUPPORTED_KEYWORDS):
                raise fail(where, f"unexpected {{{{ {text} }}}} in command")
            elif text not in SUPPORTED_FUNCTIONS:
                raise fail(where, f'function "{text}" is not supported by the Nomad double\'s template renderer '
                                  f"(it renders {', '.join(SUPPORTED_FUNCTIONS)})", UnsupportedAction)
            else:
                node = _Fn(text, text, where)
        elif kind == "lparen":
            pipe = self.pipeline()
            close = self.peek()
            if close is None or close[0] != "rparen":
                raise fail(where, "unclosed left paren")
            self.i += 1
            end = close[3]
            node = _Sub(pipe, self.parser.text[where:end], where)
        elif kind in ("variable", "declare"):
            raise fail(where, f"template variables ({text}) are not supported by the Nomad double's template "
                              "renderer", UnsupportedAction)
        elif kind == "char":
            raise fail(where, f"character constants ({text}) are not supported by the Nomad double's template "
                              "renderer", UnsupportedAction)
        else:
            raise fail(where, f"unexpected {text!r} in operand")
        while (token := self.peek()) is not None and token[0] == "field" and token[2] == end:
            self.i += 1
            node = _Field(node, tuple(token[1][1:].split(".")), self.parser.text[where:token[3]], where)
            end = token[3]
        return node


def _unquote(text: str, fail: Callable[[str], TemplateError]) -> str:
    out, i, body = [], 0, text[1:-1]
    while i < len(body):
        char = body[i]
        if char != "\\":
            out.append(char)
            i += 1
            continue
        code = body[i + 1]
        if code in _ESCAPES:
            out.append(_ESCAPES[code])
            i += 2
        elif code in "xuU":
            width = {"x": 2, "u": 4, "U": 8}[code]
            digits = body[i + 2:i + 2 + width]
            if len(digits) != width or not all(c in "0123456789abcdefABCDEF" for c in digits):
                raise fail("invalid syntax in quoted string")
            out.append(chr(int(digits, 16)))
            i += 2 + width
        else:
            raise fail("invalid syntax in quoted string")
    return "".join(out)


def _number(text: str, fail: Callable[[str], TemplateError]) -> int | float:
    clean = text.replace("_", "")
    try:
        if clean.lstrip("+-").lower().startswith("0x"):
            return int(clean, 16)
        if any(c in clean for c in ".eE"):
            return float(clean)
        return int(clean)
    except ValueError:
        raise fail(f"bad number syntax: {text!r}") from None


def parse(text: str, name: str = "", left: str = "{{", right: str = "}}") -> Template:
    """Parse a template; TemplateError (UnsupportedAction for what this renderer refuses) when it cannot."""
    return _Parser(text, name, left or "{{", right or "}}").parse()


# -- execution -----------------------------------------------------------------------------------------------

class _ExecError(Exception):
    def __init__(self, message: str, node: Any) -> None:
        super().__init__(message)
        self.node = node


def _go_type(value: Any) -> str:
    if isinstance(value, Struct):
        return value.type_name
    if isinstance(value, bool):
        return "bool"
    for kind, name in ((str, "string"), (int, "int"), (float, "float64"), (dict, "map[string]interface {}"),
                       (list, "[]interface {}")):
        if isinstance(value, kind):
            return name
    return "interface {}"


def _truth(value: Any) -> bool:
    """text/template's isTrue: empty, zero, false and nil are false; a struct is always true."""
    if value is NO_VALUE or value is None:
        return False
    if isinstance(value, Struct):
        return True
    return bool(value)


def go_print(value: Any) -> str:
    """A value as text/template prints it (fmt's %v, ``<no value>`` for a missing key, ``<nil>`` for nil)."""
    if value is NO_VALUE:
        return "<no value>"
    if value is None:
        return "<nil>"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 1e21:
            return str(int(value))
        text = repr(value)
        return re.sub(r"e([+-]?)(\d+)$", lambda m: f"e{m.group(1) or '+'}{int(m.group(2)):02d}", text)
    if isinstance(value, list):
        return "[" + " ".join(go_print(v) for v in value) + "]"
    if isinstance(value, dict):
        return "map[" + " ".join(f"{k}:{go_print(value[k])}" for k in sorted(value)) + "]"
    if isinstance(value, Struct):
        return "&{" + " ".join(go_print(v) for v in value.fields.values()) + "}"
    return str(value)


class _Executor:
    def __init__(self, template: Template, sources: Sources, error_on_missing_key: bool) -> None:
        self.template, self.sources, self.strict = template, sources, error_on_missing_key
        self.cache: dict[tuple[str, str], Any] = {}

    def run(self, nodes: list[Any], dot: Any, out: list[str]) -> None:
        for node in nodes:
            if isinstance(node, str):
                out.append(node)
            elif isinstance(node, _Print):
                out.append(go_print(self.pipe(node.pipe, dot)))
            else:
                value = self.pipe(node.pipe, dot)
                if _truth(value):
                    self.run(node.body, value if node.kind == "with" else dot, out)
                else:
                    self.run(node.orelse, dot, out)

    def pipe(self, pipe: _Pipe, dot: Any) -> Any:
        value: Any = _NOTHING
        for command in pipe.commands:
            value = self.command(command, dot, value)
        return value

    def command(self, command: _Command, dot: Any, piped: Any) -> Any:
        first, rest = command.operands[0], command.operands[1:]
        if isinstance(first, _Fn):
            args = [self.operand(arg, dot) for arg in rest]
            if piped is not _NOTHING:
                args.append(piped)
            return self.call(first, args)
        if rest or piped is not _NOTHING:
            raise _ExecError(f"can't give argument to non-function {first.src}", first)
        return self.operand(first, dot)

    def operand(self, node: Any, dot: Any) -> Any:
        if isinstance(node, _Lit):
            return node.value
        if isinstance(node, _Dot):
            return dot
        if isinstance(node, _Fn):
            return self.call(node, [])
        if isinstance(node, _Sub):
            return self.pipe(node.pipe, dot)
        receiver = dot if node.base is None else self.operand(node.base, dot)
        for name in node.names:
            receiver = self.field(receiver, name, node)
        return receiver

    def field(self, receiver: Any, name: str, node: _Field) -> Any:
        if receiver is NO_VALUE:
            if self.strict:
                raise _ExecError(f"nil data; no entry for key {_quote(name)}", node)
            return NO_VALUE
        if receiver is None:
            raise _ExecError(f"nil pointer evaluating interface {{}}.{name}", node)
        if isinstance(receiver, Struct):
            if name not in receiver.fields:
                raise _ExecError(f"can't evaluate field {name} in type {receiver.type_name}", node)
            return receiver.fields[name]
        if isinstance(receiver, dict):
            if name in receiver:
                return receiver[name]
            if self.strict:
                raise _ExecError(f"map has no entry for key {_quote(name)}", node)
            return NO_VALUE
        raise _ExecError(f"can't evaluate field {name} in type {_go_type(receiver)}", node)

    def call(self, fn: _Fn, args: list[Any]) -> Any:
        name = fn.name
        arity = {"env": (1, 1), "key": (1, 1), "keyExists": (1, 1), "keyOrDefault": (2, 2), "secret": (1, None),
                 "index": (1, None), "service": (1, 1)}[name]
        if len(args) < arity[0] or (arity[1] is not None and len(args) > arity[1]):
            raise _ExecError(f"wrong number of args for {name}: want {arity[0]} got {len(args)}", fn)
        if name == "index":
            return self.index(fn, args[0], args[1:])
        if name == "secret" and len(args) > 1:
            raise _ExecError("secret with data arguments (a Vault write) is not supported by the Nomad double's "
                             "template renderer", fn)
        for arg in args:
            if not isinstance(arg, str):
                raise _ExecError(f"error calling {name}: wrong type for value; expected string; got "
                                 f"{_go_type(arg)}", fn)
        if name == "env":
            return str(self.sources.env.get(args[0], ""))
        if name == "secret":
            return self.secret(args[0])
        if name == "service":
            return self.service(args[0])
        value = self.consul(args[0], "kv.block" if name == "key" else "kv.get")
        if name == "keyExists":
            return value is not None
        if value is None:
            if name == "key":  # `key` blocks until the key exists
                raise MissingDependency(f"kv.block({args[0]})", "the key does not exist")
            return args[1]
        return value

    def index(self, fn: _Fn, item: Any, indexes: list[Any]) -> Any:
        for idx in indexes:
            if item is None or item is NO_VALUE:
                raise _ExecError("error calling index: index of untyped nil", fn)
            if isinstance(item, dict):
                if not isinstance(idx, str):
                    raise _ExecError(f"error calling index: value has type {_go_type(idx)}; should be string", fn)
                item = item.get(idx)  # the element type's zero value (a nil interface) when missing
            elif isinstance(item, list | str):
                if not isinstance(idx, int) or isinstance(idx, bool):
                    raise _ExecError(f"error calling index: cannot index slice/array with type {_go_type(idx)}",
                                     fn)
                if not 0 <= idx < len(item):
                    raise _ExecError(f"error calling index: index out of range: {idx}", fn)
                item = item[idx] if isinstance(item, list) else ord(item[idx])
            else:
                raise _ExecError(f"error calling index: can't index item of type {_go_type(item)}", fn)
        return item

    def secret(self, path: str) -> Struct:
        dependency = f"vault.read({path})"
        if ("secret", path) not in self.cache:
            if self.sources.secret is None:
                raise MissingDependency(dependency, "Vault is not configured for this template", retry=False)
            try:
                response = self.sources.secret(path)
            except SourceError as exc:
                raise MissingDependency(dependency, exc.reason, exc.retry) from None
            if response is None:
                raise MissingDependency(dependency, f"no secret exists at {path}")
            self.cache["secret", path] = Struct("*dependency.Secret", {
                "RequestID": response.get("request_id") or "", "LeaseID": response.get("lease_id") or "",
                "LeaseDuration": response.get("lease_duration") or 0,
                "Renewable": bool(response.get("renewable")), "Data": response.get("data") or {},
                "Warnings": response.get("warnings"), "Auth": response.get("auth"),
                "WrapInfo": response.get("wrap_info")})
        return self.cache["secret", path]

    def service(self, name: str) -> list[Struct]:
        """consul-template's ``service "name"``: the passing instances (an empty list is an answer, not a wait),
        each a ``*dependency.HealthService`` whose Address falls back to the node's."""
        dependency = f"health.service({name}|passing)"
        if ("service", name) not in self.cache:
            if self.sources.service is None:
                raise MissingDependency(dependency, "Consul is not configured for this template", retry=False)
            try:
                entries = self.sources.service(name)
            except SourceError as exc:
                raise MissingDependency(dependency, exc.reason, exc.retry) from None
            self.cache["service", name] = [Struct("*dependency.HealthService", {
                "Node": e["Node"]["Node"], "NodeID": e["Node"].get("ID", ""), "NodeAddress": e["Node"]["Address"],
                "NodeDatacenter": e["Node"].get("Datacenter", ""), "Address": e["Service"].get("Address")
                or e["Node"]["Address"], "ID": e["Service"]["ID"], "Name": e["Service"]["Service"],
                "Tags": list(e["Service"].get("Tags") or []), "Port": e["Service"]["Port"], "Status": "passing",
                "ServiceMeta": e["Service"].get("Meta") or {}, "NodeMeta": e["Node"].get("Meta") or {}})
                for e in entries]
        return self.cache["service", name]  # type: ignore[no-any-return]

    def consul(self, key: str, kind: str) -> str | None:
        if ("key", key) not in self.cache:
            if self.sources.key is None:
                raise MissingDependency(f"{kind}({key})", "Consul is not configured for this template", retry=False)
            try:
                self.cache["key", key] = self.sources.key(key)
            except SourceError as exc:
                raise MissingDependency(f"{kind}({key})", exc.reason, exc.retry) from None
        return self.cache["key", key]


def _quote(name: str) -> str:
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render(template: Template, sources: Sources | None = None, error_on_missing_key: bool = False) -> str:
    """Execute a parsed template; TemplateError for a template bug, MissingDependency for data not there (yet)."""
    executor = _Executor(template, sources or Sources(), error_on_missing_key)
    out: list[str] = []
    try:
        executor.run(template.nodes, NO_VALUE, out)  # Nomad executes templates without data
    except _ExecError as exc:
        node, name = exc.node, template.name
        where = f"{name}:{_position(template.text, node.pos)}"
        raise TemplateError(f'template: {where}: executing "{name}" at <{node.src}>: {exc}') from None
    return "".join(out)


# -- env files -----------------------------------------------------------------------------------------------

def parse_env(text: str) -> dict[str, str]:
    """An env file as Nomad reads an ``env = true`` template back; EnvParseError names the line, never a value."""
    env: dict[str, str] = {}
    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw[:-1] if raw.endswith("\r") else raw
        if not line.strip(" \t") or line.lstrip(" \t").startswith("#"):
            continue
        try:
            key, value = _env_line(line)
        except ValueError as exc:
            raise EnvParseError(f"error on line {number}: {exc}") from None
        env[key] = value
    return env


def _env_line(line: str) -> tuple[str, str]:
    if "=" not in line:
        raise ValueError('missing "="')
    key, value = line.split("=", 1)
    key = key.strip(" \t")
    key = key[len("export "):] if key.startswith("export ") else key
    if not key:
        raise ValueError("empty key")
    if not _ENV_KEY.fullmatch(key):
        raise ValueError("key must be [A-Za-z_][A-Za-z0-9_]*")
    value = value.strip(" \t")
    out: list[str] = []
    significant = 0  # how much of ``out`` survives a trailing comment (unquoted blanks before it do not)
    mode = "plain"
    for char in value:
        if ord(char) < 32:
            raise ValueError(f"0x{ord(char):02x} is an invalid value character")
        if mode == "plain":
            if char == '"':
                mode = "double"
            elif char == "'":
                mode = "single"
            elif char == "#":
                return key, "".join(out[:significant])
            else:
                out.append(char)
                if char not in " \t":
                    significant = len(out)
        elif mode == "double":
            if char == '"':
                mode = "plain"
            elif char == "\\":
                mode = "escape"
            else:
                out.append(char)
                significant = len(out)
        elif mode == "escape":
            escaped = {'"': '"', "\\": "\\", "n": "\n", "t": "\t"}.get(char)
            if escaped is None:
                raise ValueError("invalid escape sequence")
            out.append(escaped)
            significant = len(out)
            mode = "double"
        else:  # single
            if char == "'":
                mode = "plain"
            else:
                out.append(char)
                significant = len(out)
    if mode == "double":
        raise ValueError('unmatched "')
    if mode == "single":
        raise ValueError("unmatched '")
    if mode == "escape":
        raise ValueError("incomplete escape sequence")
    return key, "".join(out)
