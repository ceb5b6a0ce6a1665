"""Settings, read from luigi.cfg sections with the ecosystem's environment variables winning.

One ``luigi.Config`` class per section, as luigi.contrib does for ``[s3]`` and ``[hdfs]``.
Settings name secrets by where they live (a Vault path), never hold them.
"""

from __future__ import annotations

import functools
import os
import re
from typing import TypeVar

import luigi

from .errors import ConfigurationError

_C = TypeVar("_C", bound=luigi.Config)


class caravan(luigi.Config):  # noqa: N801 - the class name is the luigi.cfg section name
    """``[caravan]``: where artifacts live and which backends run the steps."""

    artifact_root = luigi.Parameter(
        default=".caravan/artifacts",
        description="Root URI of every artifact: a path or file:// (local), s3://bucket/prefix, "
        "hdfs://host:port/path or webhdfs://host:port/path (WebHDFS HTTP address). "
        "Env CARAVAN_ARTIFACT_ROOT wins.",
    )
    executor = luigi.ChoiceParameter(
        default="local", choices=["local", "nomad"],
        description="Where heavy steps run. Env CARAVAN_EXECUTOR wins.",
    )
    pointer = luigi.ChoiceParameter(
        default="file", choices=["file", "consul"],
        description="Where model pointers live. Env CARAVAN_POINTER wins.",
    )
    pointer_root = luigi.Parameter(
        default=".caravan/pointers", description="Folder of the file pointer backend.",
    )
    s3_endpoint_url = luigi.Parameter(
        default="",
        description="S3 endpoint for S3-compatible servers; AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL win.",
    )
    s3_conditional_writes = luigi.ChoiceParameter(
        default="auto", choices=["auto", "always", "never"],
        description="Publish manifests with PutObject If-None-Match: * ('auto' falls back to "
        "head-then-put only if the server answers 501 NotImplemented).",
    )
    webhdfs_user = luigi.Parameter(
        default="", description="WebHDFS user (user.name); env HADOOP_USER_NAME wins.",
    )
    jobspec_dir = luigi.Parameter(
        default="",
        description="Folder of the steps' Nomad job specs (<job>.nomad.hcl); default ./nomad, else the "
        "project's nomad/ beside jobs/. Env CARAVAN_JOBSPEC_DIR wins.",
    )
    secrets = luigi.ChoiceParameter(
        default="env", choices=["env", "vault"],
        description="Where secrets come from: the environment (what Nomad templates render) or Vault "
        "([vault] section). An environment variable that carries a secret always wins. Env CARAVAN_SECRETS wins.",
    )
    mlflow_tracking_uri = luigi.Parameter(
        default="",
        description="If set (and mlflow is installed), every training is also recorded as an MLflow run "
        "with its hyperparameters, metrics and artifact URI. Env MLFLOW_TRACKING_URI wins.",
    )
    local_workdir = luigi.Parameter(
        default="",
        description="Where the local executor makes each step's working directory (default: the system temp dir).",
    )
    environment = luigi.Parameter(
        default="",
        description="The environment (production, staging, dev...) in every shared name: Consul services "
        "caravan-<env>-<service>, KV caravan/<env>/models/, Vault <mount>/data/caravan/<env>/, Vault roles "
        "caravan-<env>-<role>. Empty: derived from the Nomad namespace (see caravan.config.environment). "
        "Env CARAVAN_ENVIRONMENT wins.",
    )


@functools.cache
def section(config_class: type[_C]) -> _C:
    """The settings of one luigi.cfg section, read once per process (luigi resolves every
    parameter against the config files on each instantiation, which hot paths cannot afford)."""
    return config_class()


def reload() -> None:
    """Forget cached sections, e.g. after changing luigi's configuration in a test."""
    section.cache_clear()


def setting(env_name: str, configured: str) -> str:
    """The environment variable ``env_name`` if set and non-empty, else the configured value."""
    return os.environ.get(env_name) or configured


def artifact_root() -> str:
    """The artifact root in effect (``CARAVAN_ARTIFACT_ROOT`` or ``[caravan] artifact_root``)."""
    return setting("CARAVAN_ARTIFACT_ROOT", section(caravan).artifact_root)


#: An environment name: it becomes part of DNS-style Consul service names, KV keys, Vault paths and role names.
_ENVIRONMENT = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,30}[a-z0-9])?")
#: The environment of a process that names none and runs in no Nomad namespace (or in "default").
LOCAL_ENVIRONMENT = "dev"
#: The Nomad namespace whose environment is "production" (the other caravan-<env> namespaces give <env>).
PRODUCTION_NAMESPACE = "caravan"


def check_environment(name: str, source: str = "CARAVAN_ENVIRONMENT or [caravan] environment") -> str:
    """``name`` if it is a valid environment name (1-32 of ``[a-z0-9-]``, no leading or trailing hyphen);
    ``source`` says where it came from in the error."""
    # fullmatch: "$" would let "prod\n" through.
    if not isinstance(name, str) or not _ENVIRONMENT.fullmatch(name):
        raise ConfigurationError(f"environment {name!r} ({source}) must be 1-32 of [a-z0-9-], starting and "
                                 "ending with a letter or digit")
    return name


def environment_of_namespace(namespace: str) -> str:
    """The environment a Nomad namespace stands for: ``caravan`` is production, ``caravan-<env>`` is ``<env>``,
    no namespace or ``default`` is ``dev`` (a laptop, a dev agent), any other namespace is its own name."""
    if not namespace or namespace == "default":
        return LOCAL_ENVIRONMENT
    if namespace == PRODUCTION_NAMESPACE:
        return "production"
    return namespace.removeprefix(f"{PRODUCTION_NAMESPACE}-") or namespace


def environment(namespace: str | None = None) -> str:
    """The environment in effect: ``CARAVAN_ENVIRONMENT``, else ``[caravan] environment``, else derived from the
    Nomad namespace: ``namespace`` if given, else ``NOMAD_NAMESPACE`` (which Nomad sets in every task), else
    ``[nomad] namespace``."""
    named = setting("CARAVAN_ENVIRONMENT", section(caravan).environment)
    if named:
        return check_environment(named)
    if namespace is None:
        # luigi's config, not caravan.nomad_api's section class: importing the Nomad client here would make
        # every import of caravan.config pay for it.
        namespace = setting("NOMAD_NAMESPACE", luigi.configuration.get_config().get("nomad", "namespace", ""))
    return check_environment(environment_of_namespace(namespace),
                             f"derived from the Nomad namespace {namespace!r}; set CARAVAN_ENVIRONMENT")
