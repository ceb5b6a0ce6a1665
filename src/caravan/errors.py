"""caravan's exceptions: one tree, so callers can catch as broadly or narrowly as they need.

::

    CaravanError
    ├── ConfigurationError          a setting is missing, malformed, or names an unknown backend
    ├── ArtifactError               (carries .artifact and .store)
    │   ├── ArtifactExistsError     a published artifact would be written again
    │   ├── ArtifactNotFoundError   no published artifact (or file) at that address
    │   └── ArtifactCorruptError    a manifest or file does not match what was published
    ├── BackendError                (carries .backend)
    │   ├── BackendUnavailable      connection refused, timeout, 429 or 5xx: retryable
    │   └── BackendRejected         the backend understood and said no (4xx): not retryable
    ├── JobSpecError                a Nomad job spec is missing or breaks the job contract
    ├── StepFailed                  a dispatched step did not publish its artifact
    ├── PointerConflict             a check-and-set on a model pointer lost a race
    └── SecretNotFound              a secret path or key is missing (names the path, never the value)

Client libraries' exceptions are translated into these at the backend edge only, with
``raise ... from exc`` so the original stays in the traceback.
"""

from __future__ import annotations

from .redaction import redact


class CaravanError(Exception):
    """Base of every error caravan raises on purpose; its message never carries a secret this process read."""

    def __init__(self, *args: object) -> None:
        super().__init__(*(redact(a) if isinstance(a, str) else a for a in args))


class ConfigurationError(CaravanError):
    """A setting is missing or malformed, or names a backend caravan does not know."""


class ArtifactError(CaravanError):
    """Something is wrong with one artifact; the message names the artifact and its store."""

    def __init__(self, message: str, *, artifact: str = "", store: str = "") -> None:
        self.artifact = artifact
        self.store = store
        where = ", ".join(part for part in (f"artifact {artifact}" if artifact else "",
                                            f"store {store}" if store else "") if part)
        super().__init__(f"{message} ({where})" if where else message)


class ArtifactExistsError(ArtifactError):
    """A published artifact is never written again."""


class ArtifactNotFoundError(ArtifactError):
    """There is no published artifact, or no such file in it."""


class ArtifactCorruptError(ArtifactError):
    """A manifest is unreadable, or a file's size or sha256 differs from its manifest."""


class BackendError(CaravanError):
    """A remote backend (S3, WebHDFS, Nomad, Consul, Vault) failed a request."""

    def __init__(self, message: str, *, backend: str = "") -> None:
        self.backend = backend
        super().__init__(f"{backend}: {message}" if backend else message)


class BackendUnavailable(BackendError):
    """The backend could not be reached or answered 429/5xx; the call may be retried if idempotent."""


class BackendRejected(BackendError):
    """The backend refused the request (4xx); retrying the same request will not help."""


class JobSpecError(CaravanError):
    """A Nomad job spec is missing, unparsable, or does not follow caravan's job contract."""


class StepFailed(CaravanError):
    """A heavy step ran but did not publish its artifact.

    Carries what an operator needs to find it: the (child) job id, allocation ids,
    exit code and the tail of stderr.
    """

    def __init__(self, message: str, *, job_id: str = "", alloc_ids: tuple[str, ...] = (),
                 exit_code: int | None = None, stderr_tail: str = "", artifact: str = "") -> None:
        stderr_tail = redact(stderr_tail)  # a step's stderr may quote a secret this process also knows
        self.job_id = job_id
        self.alloc_ids = tuple(alloc_ids)
        self.exit_code = exit_code
        self.stderr_tail = stderr_tail
        self.artifact = artifact
        details = [message]
        if artifact:
            details.append(f"artifact: {artifact}")
        if job_id:
            details.append(f"job: {job_id}")
        if alloc_ids:
            details.append(f"allocations: {', '.join(alloc_ids)}")
        if exit_code is not None:
            details.append(f"exit code: {exit_code}")
        if stderr_tail:
            details.append("stderr (last lines):\n" + stderr_tail.rstrip())
        super().__init__("\n".join(details))


class PointerConflict(CaravanError):
    """A model pointer changed between read and check-and-set write."""


class PromotionLocked(PointerConflict):
    """Another run held the model's promotion lock for longer than this one would wait."""


class SecretNotFound(CaravanError):
    """A secret is missing at its path. The message names the path and key, never a value."""

    def __init__(self, path: str, key: str = "", *, source: str = "") -> None:
        self.path = path
        self.key = key
        what = f"{path}#{key}" if key else path
        super().__init__(f"secret {what} not found" + (f" in {source}" if source else ""))


class SecretAccessDenied(CaravanError):
    """The secret source refused: bad or expired credentials, or a policy that does not cover the path.

    The message names the source, its address and the path, never a token or a value.
    """

    def __init__(self, message: str, *, path: str = "", source: str = "") -> None:
        self.path = path
        self.source = source
        super().__init__(message)
