"""The client's vault and template prestart hooks (``client/allocrunner/taskrunner/template``)."""

from __future__ import annotations

import os
import traceback
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .common import (
    SERVICE_TIMEOUT_S,
    TEMPLATE_ATTEMPTS,
    TEMPLATE_BACKOFF_S,
    AllocRec,
    TaskRun,
    interpolate,
    now_ns,
    rfc3339,
)
from .templates import EnvParseError, MissingDependency, SourceError, Sources, TemplateError, parse_env, render
from .templates import parse as parse_template


class Prestart:
    """The client's vault and template prestart hooks (a mixin of :class:`NomadDouble`)."""

    def _vault_env(self, task: dict[str, Any]) -> dict[str, str]:
        """VAULT_TOKEN (and VAULT_NAMESPACE) for a task whose ``vault`` block asks for them (V3)."""
        vault = task.get("Vault")
        if vault is None or self.vault_token is None or not vault.get("Env", True):
            return {}
        env = {"VAULT_TOKEN": self.vault_token}
        if vault.get("Namespace"):
            env["VAULT_NAMESPACE"] = vault["Namespace"]
        return env

    def _prepare_secrets(self, rec: AllocRec, run: TaskRun) -> bool:
        """The vault and template prestart hooks: token file, then every template rendered (False: task failed).

        Data a template waits for is retried TEMPLATE_ATTEMPTS times with a ``Template`` "Missing: ..." event
        for each new set of missing dependencies; then, or at once for a template error, the task is failed
        with a ``Killing`` event, as the template manager's Kill does, and never starts.
        """
        vault = run.spec.get("Vault")
        if vault is not None and self.vault_token is not None and not vault.get("DisableFile"):
            token_file = rec.root / run.name / "secrets" / "vault_token"
            descriptor = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(descriptor, "w") as out:
                out.write(self.vault_token)
        if not self.render_templates or not run.spec.get("Templates"):
            return True
        backoff_s, missing_shown = TEMPLATE_BACKOFF_S, ""
        for attempt in range(1, TEMPLATE_ATTEMPTS + 1):
            try:
                run.template_env = self._render_templates(rec, run)
                return True
            except MissingDependency as missing:
                if not missing.retry or attempt == TEMPLATE_ATTEMPTS:
                    return self._template_failed(rec, run, f"Template failed: {missing}")
                if missing.dependency != missing_shown:
                    missing_shown = missing.dependency
                    with self._cond:
                        self._task_event(rec, run.name, "Template", f"Missing: {missing.dependency}", self._bump())
                        self._cond.notify_all()
            except TemplateError as exc:
                return self._template_failed(rec, run, f"Template failed: {exc}")
            except EnvParseError as exc:
                return self._template_failed(rec, run, f"Template failed to read environment variables: {exc}")
            except Exception as exc:  # a bug in the renderer must fail the task, not hang it; no text (values)
                frame = traceback.extract_tb(exc.__traceback__)[-1]
                where = f"{Path(frame.filename).name}:{frame.lineno}"
                return self._template_failed(rec, run, f"Template failed: {type(exc).__name__} at {where}")
            if rec.kill.wait(backoff_s) or self._closing.is_set() or rec.lost:
                with self._cond:
                    self._finish_killed(rec, run, None)
                return False
            backoff_s *= 2
        return False  # not reached: the last attempt returns

    def _template_failed(self, rec: AllocRec, run: TaskRun, message: str) -> bool:
        with self._cond:
            if rec.lost or self._closing.is_set():
                return False
            idx = self._bump()
            self._task_event(rec, run.name, "Killing", message, idx, FailsTask=True,
                             Details={"fails_task": "true"})
            self._set_task(rec, run.name, idx, State="dead", Failed=True, FinishedAt=rfc3339(now_ns()))
            run.exited.set()
            if any(other is not run and not other.exited.is_set() for other in rec.tasks.values()):
                self._start(self._kill_alloc, rec)
            self._cond.notify_all()
        return False

    def _render_templates(self, rec: AllocRec, run: TaskRun) -> dict[str, str]:
        """Render every template, then write them; the environment their ``Envvars`` files give the task."""
        task = run.spec
        with self._cond:
            runtime, task_env, view = self._environment(rec, run)
        # Templates see the task's environment only (Nomad masks the agent's own), with relative task dirs.
        sources = Sources(env={**self.env, **task_env, **runtime, **self._vault_env(task)},
                          secret=self._vault_reader(task), key=self._consul_reader(rec, task),
                          service=self._consul_service_reader(rec, task))
        relative = {**view, "NOMAD_ALLOC_DIR": "alloc", "NOMAD_TASK_DIR": "local", "NOMAD_SECRETS_DIR": "secrets"}
        task_dir, rendered = rec.root / run.name, []
        for template in task["Templates"]:
            name = interpolate(str(template.get("DestPath") or ""), relative)
            dest = self._template_path(rec, task_dir, name, "destination")
            text = template.get("EmbeddedTmpl") or ""
            if not text and template.get("SourcePath"):
                source = interpolate(str(template["SourcePath"]), relative)
                text = self._template_path(rec, task_dir, source, "source").read_text()
            perms = str(template.get("Perms") or "0644")
            try:
                mode = int(perms, 8)
            except ValueError:
                raise TemplateError(f'Failed to parse "{perms}" as octal') from None
            parsed = parse_template(text, name, template.get("LeftDelim") or "{{", template.get("RightDelim") or "}}")
            output = render(parsed, sources, bool(template.get("ErrMissingKey")))
            rendered.append((dest, output, mode, bool(template.get("Envvars"))))
        env: dict[str, str] = {}
        for dest, output, mode, envvars in rendered:
            dest.parent.mkdir(parents=True, exist_ok=True)
            partial = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}.tmp")
            partial.write_text(output)
            partial.chmod(mode)
            partial.replace(dest)
            if envvars:
                try:
                    env.update(parse_env(output))
                except EnvParseError as exc:
                    raise EnvParseError(f'error parsing env template "{dest}": {exc}') from None
        return env

    @staticmethod
    def _template_path(rec: AllocRec, task_dir: Path, name: str, what: str) -> Path:
        """A template path, always under the task dir (an absolute one too); ``alloc/`` is the shared alloc dir."""
        parts = Path(name).parts[1:] if Path(name).is_absolute() else Path(name).parts
        normalized = os.path.normpath(os.path.join(*parts)) if parts else "."
        if normalized == "." or normalized == ".." or normalized.startswith("../"):
            raise TemplateError(f"template {what} path escapes alloc directory")
        relative = Path(normalized)
        return rec.root / relative if relative.parts[0] == "alloc" else task_dir / relative

    def _vault_reader(self, task: dict[str, Any]) -> Callable[[str], dict[str, Any] | None]:
        """Reads a Vault path with hvac, with the token the client hands this task."""
        vault = task.get("Vault")

        def read(path: str) -> dict[str, Any] | None:
            if self.vault_addr is None:
                raise SourceError("Vault is not enabled on this Nomad client", retry=False)
            if vault is None:
                raise SourceError("the task has no vault block, so the client gives its templates no Vault token",
                                  retry=False)
            import hvac
            import requests

            client = hvac.Client(url=self.vault_addr, token=self.vault_token or "", timeout=SERVICE_TIMEOUT_S,
                                 namespace=vault.get("Namespace") or None)
            try:
                response = client.read(path)
            except hvac.exceptions.Forbidden:
                raise SourceError("Code: 403. Errors: permission denied") from None
            except hvac.exceptions.VaultError as exc:
                raise SourceError(f"Vault answered {type(exc).__name__}") from None
            except requests.RequestException:
                raise SourceError(f"Vault at {self.vault_addr} is unreachable") from None
            return response if isinstance(response, dict) else None

        return read

    def _consul_token(self, rec: AllocRec, task: dict[str, Any]) -> str | None:
        """The Consul token of a task's templates. With ``consul_identity`` (a client with Consul workload
        identities, Nomad 1.10+) a task or group with a ``consul`` block gets the token Consul's auth method
        issues for its identity, ``consul_identity(job, group, task)``; any other task renders with the
        client's own token (job_endpoint_hook_implicit_identities.go adds the identity only for a consul block)."""
        if self.consul_identity is not None and (task.get("Consul") or rec.group.get("Consul")):
            return self.consul_identity(rec.job, rec.group, task)
        return self.consul_token

    def _consul_service_reader(self, rec: AllocRec, task: dict[str, Any]
                               ) -> Callable[[str], list[dict[str, Any]]] | None:
        """Reads a service's passing instances with py-consul, with the task's Consul token (None: no Consul).
        Consul filters what the token may not read, so a missing permission is an empty list, as in production."""
        if self.consul_addr is None:
            return None
        import consul
        import requests

        parts = urlsplit(self.consul_addr if "://" in self.consul_addr else f"http://{self.consul_addr}")
        client = consul.Consul(host=parts.hostname, port=parts.port or 8500, scheme=parts.scheme,
                               token=self._consul_token(rec, task), connections_timeout=SERVICE_TIMEOUT_S)

        def instances(name: str) -> list[dict[str, Any]]:
            try:
                _, entries = client.health.service(name, passing=True)
            except consul.ACLPermissionDenied:
                raise SourceError("Code: 403. Errors: Permission denied") from None
            except (consul.ConsulException, requests.RequestException):
                raise SourceError(f"Consul at {self.consul_addr} is unreachable") from None
            return list(entries or [])

        return instances

    def _consul_reader(self, rec: AllocRec, task: dict[str, Any]) -> Callable[[str], str | None] | None:
        """Reads a Consul KV key with py-consul (None when the client has no Consul)."""
        if self.consul_addr is None:
            return None
        import consul
        import requests

        parts = urlsplit(self.consul_addr if "://" in self.consul_addr else f"http://{self.consul_addr}")
        client = consul.Consul(host=parts.hostname, port=parts.port or 8500, scheme=parts.scheme,
                               token=self._consul_token(rec, task), connections_timeout=SERVICE_TIMEOUT_S)

        def get(key: str) -> str | None:
            try:
                _, entry = client.kv.get(key)
            except consul.ACLPermissionDenied:
                raise SourceError("Code: 403. Errors: Permission denied") from None
            except (consul.ConsulException, requests.RequestException):
                raise SourceError(f"Consul at {self.consul_addr} is unreachable") from None
            if entry is None:
                return None
            value = entry.get("Value")
            return "" if value is None else bytes(value).decode("utf-8", errors="replace")

        return get
