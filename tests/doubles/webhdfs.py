"""An in-memory WebHDFS REST server that the real ``hdfs`` client drives unchanged.

No HDFS can be installed where the tests run, so this double answers the WebHDFS REST API
(https://hadoop.apache.org/docs/stable/hadoop-project-dist/hadoop-hdfs/WebHDFS.html) as a Hadoop 3
namenode and datanode do: CREATE, APPEND and OPEN go through a 307 redirect to a "datanode" URL on
the same server; errors are RemoteException JSON bodies with the status codes of Hadoop's
ExceptionHandler; the namespace follows FSDirRenameOp, FSDirDeleteOp, FSDirMkdirOp and
FSDirWriteFileOp.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, final
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit

_RESOURCES = "org.apache.hadoop.hdfs.web.resources"
NAMENODE_PREFIX = "/webhdfs/v1"
DATANODE_PREFIX = "/datanode/webhdfs/v1"
CLIENT_MACHINE = "127.0.0.1"  # the writer FileAlreadyExistsException names (the datanode, for WebHDFS)
ROOT_INODE_ID = 16385  # INodeId.ROOT_INODE_ID; later inodes count up from it
DEFAULT_BLOCK_SIZE = 128 * 1024 * 1024
DEFAULT_REPLICATION = 3


def _enum(names: str) -> frozenset[str]:
    return frozenset(names.split())


# The ops of Hadoop's GetOpParam/PutOpParam/PostOpParam/DeleteOpParam enums. An op sent with another
# HTTP method does not parse as that method's enum, which Jersey reports as a 400.
_OP_ENUMS: dict[str, tuple[str, frozenset[str]]] = {
    "GET": ("GetOpParam", _enum(
        "OPEN GETFILESTATUS LISTSTATUS LISTSTATUS_BATCH GETCONTENTSUMMARY GETQUOTAUSAGE GETFILECHECKSUM"
        " GETHOMEDIRECTORY GETDELEGATIONTOKEN GET_BLOCK_LOCATIONS GETFILEBLOCKLOCATIONS GETACLSTATUS"
        " GETXATTRS GETTRASHROOT LISTXATTRS GETALLSTORAGEPOLICY GETSTORAGEPOLICY CHECKACCESS GETSNAPSHOTDIFF"
        " GETSNAPSHOTDIFFLISTING GETSNAPSHOTTABLEDIRECTORYLIST GETSNAPSHOTLIST GETECPOLICY GETSERVERDEFAULTS"
        " GETLINKTARGET GETFILELINKSTATUS GETSTATUS GETECPOLICIES NULL")),
    "PUT": ("PutOpParam", _enum(
        "CREATE MKDIRS CREATESYMLINK RENAME SETREPLICATION SETOWNER SETPERMISSION SETTIMES"
        " RENEWDELEGATIONTOKEN CANCELDELEGATIONTOKEN MODIFYACLENTRIES REMOVEACLENTRIES REMOVEDEFAULTACL"
        " REMOVEACL SETACL SETXATTR REMOVEXATTR ALLOWSNAPSHOT DISALLOWSNAPSHOT CREATESNAPSHOT RENAMESNAPSHOT"
        " SETSTORAGEPOLICY SATISFYSTORAGEPOLICY SETQUOTA SETQUOTABYSTORAGETYPE ENABLEECPOLICY"
        " DISABLEECPOLICY SETECPOLICY NULL")),
    "POST": ("PostOpParam", _enum("APPEND CONCAT TRUNCATE UNSETSTORAGEPOLICY UNSETECPOLICY NULL")),
    "DELETE": ("DeleteOpParam", _enum("DELETE DELETESNAPSHOT NULL")),
}

# Simple name -> (status, Java class), as ExceptionHandler maps them: FileNotFoundException 404,
# other IOExceptions and SecurityException 403, IllegalArgument/UnsupportedOperation 400.
_JAVA: dict[str, tuple[int, str]] = {
    "FileNotFoundException": (404, "java.io.FileNotFoundException"),
    "FileAlreadyExistsException": (403, "org.apache.hadoop.fs.FileAlreadyExistsException"),
    "ParentNotDirectoryException": (403, "org.apache.hadoop.fs.ParentNotDirectoryException"),
    "PathIsNotEmptyDirectoryException": (403, "org.apache.hadoop.fs.PathIsNotEmptyDirectoryException"),
    "IOException": (403, "java.io.IOException"),
    "SecurityException": (403, "java.lang.SecurityException"),
    "IllegalArgumentException": (400, "java.lang.IllegalArgumentException"),
    "InvalidPathException": (400, "org.apache.hadoop.fs.InvalidPathException"),
    "UnsupportedOperationException": (400, "java.lang.UnsupportedOperationException"),
}


class RemoteError(Exception):
    """A Java exception, answered as a RemoteException JSON body."""

    def __init__(self, exception: str, message: str, status: int | None = None) -> None:
        super().__init__(message)
        default_status, self.java_class = _JAVA[exception]
        self.status, self.exception, self.message = status or default_status, exception, message

    def body(self) -> bytes:
        """The documented ``{"RemoteException": {...}}`` object, encoded."""
        return json.dumps({"RemoteException": {
            "exception": self.exception, "javaClassName": self.java_class, "message": self.message}}).encode()


def _param_error(name: str, reason: str) -> RemoteError:
    # Jersey's ParamException, as ExceptionHandler rewrites it.
    return RemoteError("IllegalArgumentException", f'Invalid value for webhdfs parameter "{name}": {reason}')


def _bool_param(query: dict[str, str], name: str, default: bool) -> bool:
    value = query.get(name)
    if value is None:
        return default
    if value.lower() not in ("true", "false"):  # BooleanParam ignores case
        raise _param_error(name, f'Failed to parse "{value}" to Boolean.')
    return value.lower() == "true"


def _int_param(query: dict[str, str], name: str, minimum: int, radix: int = 10) -> int | None:
    value = query.get(name)
    if value is None or value.lower() == "null":  # "null" is Hadoop's default value string
        return None
    try:
        number = int(value, radix)
    except ValueError:
        raise _param_error(name, f'Failed to parse "{value}" as a radix-{radix} integer.') from None
    if number < minimum:
        raise _param_error(name, f"Invalid parameter range: {name} = {value} < {minimum}")
    return number


def _now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class _Node:
    """One inode: a directory (children) or a file (data)."""

    is_dir: bool
    owner: str
    permission: int
    file_id: int
    mtime: int
    atime: int
    data: bytes = b""
    replication: int = 0
    block_size: int = 0
    children: dict[str, _Node] = field(default_factory=dict)

    def status(self, suffix: str) -> dict[str, Any]:
        """The FileStatus JSON properties, with ``pathSuffix`` set to ``suffix``."""
        return {
            "accessTime": self.atime, "blockSize": self.block_size, "childrenNum": len(self.children),
            "fileId": self.file_id, "group": "supergroup", "length": len(self.data),
            "modificationTime": self.mtime, "owner": self.owner, "pathSuffix": suffix,
            "permission": format(self.permission, "o"), "replication": self.replication,
            "storagePolicy": 0, "type": "DIRECTORY" if self.is_dir else "FILE",
        }


def _components(path: str) -> list[str]:
    """The names along ``path``, refusing what HDFS's DFSUtil.isValidName refuses."""
    parts = path.split("/")
    if not path.startswith("/") or any(
            name in (".", "..") or ":" in name or not (name or i in (0, len(parts) - 1))
            for i, name in enumerate(parts)):
        raise RemoteError("InvalidPathException", f"Invalid path name Invalid file name: {path}")
    return [name for name in parts if name]


def _joined(parts: list[str]) -> str:
    return "/" + "/".join(parts)


def _not_a_directory(parts: list[str]) -> RemoteError:
    # FSPermissionChecker.checkSimpleTraverse: a file where a directory must be, on any operation.
    return RemoteError("ParentNotDirectoryException", f"{_joined(parts)} (is not a directory)")


class _Namespace:
    """The directory tree. The caller holds ``lock`` so that every operation, rename included, is atomic."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.clear()

    def clear(self) -> None:
        with self.lock:
            self._next_id = ROOT_INODE_ID
            self.root = self._new(True, "hdfs", 0o755)

    def _new(self, is_dir: bool, owner: str, permission: int, **extra: Any) -> _Node:
        now = _now_ms()
        self._next_id += 1
        return _Node(is_dir, owner, permission, self._next_id - 1, now, 0 if is_dir else now, **extra)

    def lookup(self, parts: list[str]) -> _Node | None:
        """The inode at ``parts``, None if missing."""
        node = self.root
        for i, name in enumerate(parts):
            if not node.is_dir:
                raise _not_a_directory(parts[:i])
            if name not in node.children:
                return None
            node = node.children[name]
        return node

    def mkdirs(self, parts: list[str], owner: str, permission: int) -> _Node:
        """Create ``parts`` and its missing ancestors (which also get u+wx, as HDFS gives them)."""
        node = self.root
        for i, name in enumerate(parts):
            child = node.children.get(name)
            if child is None:
                child = self._new(True, owner, permission if i == len(parts) - 1 else permission | 0o300)
                node.children[name], node.mtime = child, child.mtime
            elif not child.is_dir and i == len(parts) - 1:
                raise RemoteError("FileAlreadyExistsException", f"Path is not a directory: {_joined(parts)}")
            elif not child.is_dir:
                raise _not_a_directory(parts[:i + 1])
            node = child
        return node

    def create(self, parts: list[str], data: bytes, owner: str, overwrite: bool, permission: int,
               replication: int, block_size: int) -> None:
        """FSDirWriteFileOp.startFile with createParent, then the datanode's write of ``data``."""
        path = _joined(parts)
        existing = self.lookup(parts)  # a file among the ancestors fails before anything is created
        if existing is not None and existing.is_dir:
            raise RemoteError("FileAlreadyExistsException", f"{path} already exists as a directory")
        if existing is not None and not overwrite:
            raise RemoteError("FileAlreadyExistsException",
                              f"{path} for client {CLIENT_MACHINE} already exists")
        parent = self.mkdirs(parts[:-1], owner, 0o755)
        node = self._new(False, owner, permission, data=data, replication=replication, block_size=block_size)
        parent.children[parts[-1]], parent.mtime = node, node.mtime

    def rename(self, src: list[str], dst: list[str]) -> bool:
        """The old FileSystem.rename behind WebHDFS RENAME: refusals are ``False``, not errors."""
        source, target = self.lookup(src), self.lookup(dst)
        if target is not None and target.is_dir and src:
            # "This is move() not renameTo()": an existing directory receives the source.
            dst, target = [*dst, src[-1]], target.children.get(src[-1])
        if source is None or not src:  # missing, or the root
            return False
        if dst == src:
            return True
        parent = self.lookup(dst[:-1])
        if dst[:len(src)] == src or target is not None or parent is None:
            return False  # into its own subtree, onto an existing inode, or under a missing directory
        old_parent = self.lookup(src[:-1])
        if old_parent is None:  # cannot happen: the source exists
            return False
        del old_parent.children[src[-1]]
        parent.children[dst[-1]] = source
        old_parent.mtime = parent.mtime = _now_ms()
        return True

    def delete(self, parts: list[str], recursive: bool) -> bool:
        """FSDirDeleteOp.delete: ``False`` for a missing path or the root."""
        node = self.lookup(parts)
        if node is not None and node.children and not recursive:
            # PathIOException's message format: `path': error.
            raise RemoteError("PathIsNotEmptyDirectoryException",
                              f"`{_joined(parts)} is non empty': Directory is not empty")
        parent = self.lookup(parts[:-1]) if parts else None
        if node is None or parent is None:
            return False
        del parent.children[parts[-1]]
        parent.mtime = _now_ms()
        return True


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    double: WebHDFSDouble


class _Handler(BaseHTTPRequestHandler):
    """Parses one WebHDFS request, runs it on the namespace and writes the answer."""

    protocol_version = "HTTP/1.1"  # keep-alive, as the client's requests.Session expects
    disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms delayed-ACK stalls
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        """Stay quiet: no per-request line on stderr."""

    def do_GET(self) -> None:
        """Answer a GET (OPEN, GETFILESTATUS, LISTSTATUS, GETHOMEDIRECTORY)."""
        self._dispatch("GET")

    def do_PUT(self) -> None:
        """Answer a PUT (CREATE, MKDIRS, RENAME)."""
        self._dispatch("PUT")

    def do_POST(self) -> None:
        """Answer a POST (APPEND)."""
        self._dispatch("POST")

    def do_DELETE(self) -> None:
        """Answer a DELETE (DELETE)."""
        self._dispatch("DELETE")

    def _read_body(self) -> bytes:
        # Read the whole body before answering, or what is left would corrupt the next request on the
        # kept-alive connection. Streamed writes (a generator, hdfs's AsyncWriter) arrive chunked.
        if "chunked" not in self.headers.get("Transfer-Encoding", "").lower():
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))
        chunks = []
        while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
            chunks.append(self.rfile.read(size))
            self.rfile.readline()
        while self.rfile.readline().strip():  # trailers, up to the blank line
            pass
        return b"".join(chunks)

    def _send(self, status: int, body: bytes = b"", content_type: str | None = None,
              headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in {"Content-Type": content_type, **(headers or {})}.items():
            if value:
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _json(self, obj: dict[str, Any]) -> None:
        self._send(200, json.dumps(obj).encode(), "application/json")

    def _dispatch(self, method: str) -> None:
        if self.server.double._server is not self.server:
            # Stopped: a kept-alive connection must not be answered any more than a new one would be.
            self.close_connection = True
            return
        body = self._read_body()
        url = urlsplit(self.path)
        query = {key: values[0] for key, values in parse_qs(url.query, keep_blank_values=True).items()}
        op = query.get("op", "NULL").upper()  # EnumParam upper-cases; a missing op is the NULL op
        double = self.server.double
        double._record(method, unquote(url.path), op)
        datanode = url.path.startswith(DATANODE_PREFIX)
        prefix = DATANODE_PREFIX if datanode else NAMENODE_PREFIX
        if url.path != prefix and not url.path.startswith(prefix + "/"):
            self._send(404, b"Not Found", "text/plain")
            return
        try:
            double._authenticate(query)
            enum, ops = _OP_ENUMS[method]
            if op not in ops:
                raise _param_error("op", f"No enum constant {_RESOURCES}.{enum}.Op.{op}")
            path = unquote(url.path[len(prefix):]) or "/"
            with double._fs.lock:
                (self._datanode if datanode else self._namenode)(op, path, query, body)
        except RemoteError as err:
            # A 401 is what the SPNEGO filter answers when a request brings no credentials at all.
            self._send(err.status, err.body(), "application/json",
                       {"WWW-Authenticate": "Negotiate"} if err.status == 401 else None)

    def _namenode(self, op: str, path: str, query: dict[str, str], body: bytes) -> None:
        double, fs = self.server.double, self.server.double._fs
        parts = _components(path)
        if op in ("CREATE", "OPEN", "APPEND"):
            # The namenode parses the parameters and picks a datanode; the datanode does the work, so a
            # FileAlreadyExistsException comes from the second request, as with Hadoop.
            _bool_param(query, "overwrite", False)
            for name, minimum in (("offset", 0), ("length", 0), ("replication", 1), ("blocksize", 1),
                                  ("buffersize", 1)):
                _int_param(query, name, minimum)
            _int_param(query, "permission", 0, radix=8)
            node = fs.lookup(parts)
            if op != "CREATE" and node is None:  # chooseDatanode needs the file's blocks
                raise RemoteError("FileNotFoundException", f"File {path} not found.")
            offset, size = _int_param(query, "offset", 0) or 0, len(node.data) if node else 0
            if op == "OPEN" and 0 < size <= offset:
                raise RemoteError("IOException",
                                  f"Offset={offset} out of the range [0, {size}); OPEN, path={path}")
            params = urlencode({key: value for key, value in query.items() if key != "op"})
            location = (f"{double.url}{DATANODE_PREFIX}{quote(_joined(parts))}?op={op}"
                        f"&namenoderpcaddress={double.netloc}&{params}")
            self._send(307, b"", "application/octet-stream", {"Location": location})
        elif op in ("GETFILESTATUS", "LISTSTATUS"):
            node = fs.lookup(parts)
            if node is None and op == "GETFILESTATUS":
                raise RemoteError("FileNotFoundException", f"File does not exist: {path}")
            if node is None:
                raise RemoteError("FileNotFoundException", f"File {path} does not exist.")
            if op == "GETFILESTATUS":
                self._json({"FileStatus": node.status("")})
                return
            # A file lists as itself with an empty suffix; children come in the order of their UTF-8 bytes.
            children = sorted(node.children.items(), key=lambda item: item[0].encode())
            statuses = [child.status(name) for name, child in children] if node.is_dir else [node.status("")]
            self._json({"FileStatuses": {"FileStatus": statuses}})
        elif op == "GETHOMEDIRECTORY":
            self._json({"Path": f"/user/{double._user(query)}"})
        elif op == "MKDIRS":
            permission = _int_param(query, "permission", 0, radix=8)
            fs.mkdirs(parts, double._user(query), 0o755 if permission is None else permission)
            self._json({"boolean": True})
        elif op == "RENAME":
            self._json({"boolean": fs.rename(parts, _destination(query))})
        elif op == "DELETE":
            self._json({"boolean": fs.delete(parts, _bool_param(query, "recursive", False))})
        else:  # a real op this double does not implement: say so rather than pretend
            raise RemoteError("UnsupportedOperationException",
                              f"op={op} is not supported" + ("" if op == "NULL" else " by this double"))

    def _datanode(self, op: str, path: str, query: dict[str, str], body: bytes) -> None:
        double, fs = self.server.double, self.server.double._fs
        parts = _components(path)
        if op == "CREATE":
            permission = _int_param(query, "permission", 0, radix=8)
            fs.create(parts, body, double._user(query), _bool_param(query, "overwrite", False),
                      0o644 if permission is None else permission,
                      _int_param(query, "replication", 1) or DEFAULT_REPLICATION,
                      _int_param(query, "blocksize", 1) or DEFAULT_BLOCK_SIZE)
            self._send(201, headers={"Location": f"hdfs://{double.netloc}{quote(_joined(parts))}"})
            return
        if op not in ("OPEN", "APPEND"):  # the datanode's WebHdfsHandler serves only these three
            raise RemoteError("IllegalArgumentException", f"Invalid operation {op}")
        node = fs.lookup(parts)
        if node is None:
            raise RemoteError("FileNotFoundException", f"File does not exist: {path}")
        if node.is_dir:  # INodeFile.valueOf
            raise RemoteError("FileNotFoundException", f"Path is not a file: {path}")
        if op == "APPEND":
            node.data, node.mtime = node.data + body, _now_ms()
            self._send(200)
            return
        offset, length = _int_param(query, "offset", 0) or 0, _int_param(query, "length", 0)
        end = len(node.data) if length is None else offset + length
        self._send(200, node.data[offset:end], "application/octet-stream")


def _destination(query: dict[str, str]) -> list[str]:
    """RENAME's destination: required, absolute, normalised like org.apache.hadoop.fs.Path, then valid."""
    destination = query.get("destination") or ""
    if not destination:
        raise RemoteError("IllegalArgumentException",
                          "Required param destination for op: RENAME is null or empty")
    if not destination.startswith("/"):
        raise _param_error("destination",
                           f'Invalid parameter value: destination = "{destination}" is not an absolute path.')
    try:
        return _components("/" + "/".join(name for name in destination.split("/") if name))
    except RemoteError:
        raise RemoteError("IOException", f"Invalid name: {destination}") from None


@final  # so that __enter__ can promise exactly this type
class WebHDFSDouble:
    """An in-memory WebHDFS namenode and datanode on one loopback port.

    ``token``: when set, security is on and every request must carry ``delegation=<token>``: one with
    none gets 401 (SPNEGO would be demanded), one with another token the 403 ``SecurityException``
    Hadoop's ExceptionHandler returns.
    ``default_user``: the user of requests without ``user.name`` (Hadoop's static web user) and the
    user a delegation token stands for.
    """

    def __init__(self, token: str | None = None, default_user: str = "dr.who") -> None:
        self.token, self.default_user = token, default_user
        self.url = self.netloc = ""
        self._fs = _Namespace()
        self._log: list[tuple[str, str, str]] = []
        self._log_lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> str:
        """Serve on 127.0.0.1, on a free port, from a daemon thread; return ``http://127.0.0.1:PORT``."""
        if self._server is None:
            self._server = _Server(("127.0.0.1", 0), _Handler)
            self._server.double = self
            self.netloc = f"127.0.0.1:{self._server.server_address[1]}"
            self.url = f"http://{self.netloc}"
            self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)
            self._thread.start()
        return self.url

    def stop(self) -> None:
        """Stop serving and free the port; the filesystem is kept."""
        server, thread, self._server, self._thread = self._server, self._thread, None, None
        if server is not None and thread is not None:
            server.shutdown()
            server.server_close()
            thread.join()

    def __enter__(self) -> WebHDFSDouble:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    @property
    def requests(self) -> list[tuple[str, str, str]]:
        """A copy of the request log: ``(method, decoded URL path, OP)``; datanode paths start /datanode."""
        with self._log_lock:
            return list(self._log)

    def count(self, op: str, *, datanode: bool = False) -> int:
        """How many namenode (or, with ``datanode``, datanode) requests asked for ``op``."""
        prefix = DATANODE_PREFIX if datanode else NAMENODE_PREFIX
        return sum(1 for _, path, name in self.requests if name == op.upper() and path.startswith(prefix))

    def reset_requests(self) -> None:
        """Empty the request log."""
        with self._log_lock:
            self._log.clear()

    def clear(self) -> None:
        """Empty the filesystem: only the root directory remains."""
        self._fs.clear()

    def _record(self, method: str, path: str, op: str) -> None:
        with self._log_lock:
            self._log.append((method, path, op))

    def _user(self, query: dict[str, str]) -> str:
        if self.token is not None:  # with security on, the token names the user and user.name is ignored
            return self.default_user
        return query.get("doas") or query.get("user.name") or self.default_user

    def _authenticate(self, query: dict[str, str]) -> None:
        if self.token is None:
            return
        if "delegation" not in query:
            raise RemoteError("SecurityException", "Authentication required", status=401)
        if query["delegation"] != self.token:
            raise RemoteError("SecurityException", "Failed to obtain user group information: org.apache"
                              ".hadoop.security.token.SecretManager$InvalidToken: token is not valid")
