"""Settings, read from luigi.cfg sections with the ecosystem's environment variables winning.

One ``luigi.Config`` class per section, as luigi.contrib does for ``[s3]`` and ``[hdfs]``.
Settings name secrets by where they live (a Vault path), never hold them.

Which luigi.cfg: luigi reads ``./luigi.cfg`` and ``LUIGI_CONFIG_PATH``. Importing this module also
finds the nearest ``luigi.cfg`` in the working directory or its parents (as git finds ``.git``) and
hands it to luigi in ./luigi.cfg's place, so ``caravan`` and ``luigi --module pipelines.…`` agree from
any folder of a project (``LUIGI_CONFIG_PATH`` still wins over it). A relative ``artifact_root`` or
``pointer_root`` is relative to the folder of the file that sets it; the defaults are relative to the
discovered luigi.cfg's folder (the working directory when there is none).
"""

from __future__ import annotations

import configparser
import functools
import os
import re
from pathlib import Path
from typing import TypeVar

import luigi

from . import luigi_errors
from .errors import ConfigurationError

_C = TypeVar("_C", bound=luigi.Config)

#: The local defaults of the path settings (relative: see the module docstring).
PATH_DEFAULTS = {"artifact_root": ".caravan/artifacts", "pointer_root": ".caravan/pointers"}


class caravan(luigi.Config):  # noqa: N801 - the class name is the luigi.cfg section name
    """``[caravan]``: where artifacts live and which backends run the steps."""

    artifact_root = luigi.Parameter(
        default=PATH_DEFAULTS["artifact_root"],
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
        default=PATH_DEFAULTS["pointer_root"], description="Folder of the file pointer backend.",
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

    def resolve_paths(self) -> None:
        """Make a relative ``artifact_root``/``pointer_root`` absolute, relative to the file that sets it."""
        for option in ("artifact_root", "pointer_root"):
            setattr(self, option, resolve_configured_path(option, str(getattr(self, option))))


#: The file name luigi reads from the working directory, and that caravan looks for upwards.
CONFIG_NAME = "luigi.cfg"


def find_config(start: str | os.PathLike[str]) -> Path | None:
    """The nearest ``luigi.cfg`` (a file) in ``start`` or one of its parents, or None."""
    here = Path(os.path.abspath(start))  # abspath, not resolve(): a symlinked project stays where the user is
    for folder in (here, *here.parents):
        candidate = folder / CONFIG_NAME
        if candidate.is_file():
            return candidate
    return None


def _discover() -> Path | None:
    """Find the project's luigi.cfg and, when it is not ./luigi.cfg (which luigi reads anyway), add it to luigi's
    files, then ``LUIGI_CONFIG_PATH`` again so that it keeps the last word, as luigi orders them."""
    try:
        cwd = os.getcwd()
    except OSError:  # the working directory was removed: nothing to find
        return None
    found = find_config(cwd)
    if found is None or os.environ.get("LUIGI_CONFIG_PARSER", "cfg") != "cfg":
        return found
    if found != Path(cwd, CONFIG_NAME):
        luigi.configuration.add_config_path(str(found))
        explicit = os.environ.get("LUIGI_CONFIG_PATH")
        if explicit and os.path.isfile(explicit):
            luigi.configuration.add_config_path(explicit)
        else:
            # Processes started from here (the local executor's steps, in their own working directories) read
            # the same file: luigi reads LUIGI_CONFIG_PATH wherever it starts.
            os.environ["LUIGI_CONFIG_PATH"] = str(found)
    return found


#: The luigi.cfg found from the working directory at import (None: there is none upwards).
DISCOVERED = _discover()
# Every caravan task imports this module: on the luigi command line, caravan's errors are one line.
luigi_errors.install()


def _config_files() -> list[Path]:
    """The config files luigi read, in its order (later ones win), that exist."""
    parser = luigi.configuration.get_config()
    # luigi keeps its list on the parser class (LuigiConfigParser._config_paths; add_config_path appends to it).
    paths = getattr(type(parser), "_config_paths", [])
    return [Path(os.path.abspath(p)) for p in paths if os.path.isfile(p)]


def source_of(option: str, value: str) -> Path | None:
    """The file whose ``[caravan] option`` is the ``value`` in effect (the last file luigi read that sets it),
    or None when no file does (a default, or a value set by a program)."""
    for path in reversed(_config_files()):
        parser = configparser.ConfigParser(interpolation=None)
        try:
            parser.read(path, encoding="utf-8")
        except (configparser.Error, UnicodeDecodeError):
            continue
        if parser.has_option("caravan", option):
            return path if parser.get("caravan", option).strip() == value else None
    return None


def resolve_relative(value: str, base: str | os.PathLike[str]) -> str:
    """``value`` made absolute against ``base`` if it is a relative local path; URIs and absolute paths unchanged."""
    if not value or "://" in value or os.path.isabs(value):
        return value
    return os.path.normpath(os.path.join(os.path.abspath(base), value))


def resolve_configured_path(option: str, value: str) -> str:
    """A configured path made absolute: against the folder of the file that sets it, else (a default) the
    discovered luigi.cfg's folder, else the working directory."""
    source = source_of(option, value)
    if source is not None:
        return resolve_relative(value, source.parent)
    is_default = value == PATH_DEFAULTS.get(option)
    base = DISCOVERED.parent if is_default and DISCOVERED is not None else Path.cwd()
    return resolve_relative(value, base)


@functools.cache
def section(config_class: type[_C]) -> _C:
    """The settings of one luigi.cfg section, read once per process (luigi resolves every
    parameter against the config files on each instantiation, which hot paths cannot afford)."""
    settings = config_class()
    resolve = getattr(settings, "resolve_paths", None)
    if callable(resolve):
        resolve()
    return settings


def reload() -> None:
    """Forget cached sections, e.g. after changing luigi's configuration in a test."""
    section.cache_clear()


def setting(env_name: str, configured: str) -> str:
    """The environment variable ``env_name`` if set and non-empty, else the configured value."""
    return os.environ.get(env_name) or configured


def artifact_root() -> str:
    """The artifact root in effect (``CARAVAN_ARTIFACT_ROOT`` or ``[caravan] artifact_root``, see the module
    docstring for relative paths)."""
    return setting("CARAVAN_ARTIFACT_ROOT", section(caravan).artifact_root)


def artifact_root_origin() -> str:
    """Where the artifact root in effect was set, for messages: the variable, the file, or the default."""
    if os.environ.get("CARAVAN_ARTIFACT_ROOT"):
        return "CARAVAN_ARTIFACT_ROOT"
    source = source_of("artifact_root", luigi.configuration.get_config().get("caravan", "artifact_root", "").strip())
    if source is not None:
        return f"[caravan] artifact_root in {source}"
    return "the default, under " + (str(DISCOVERED.parent) if DISCOVERED is not None else "the working directory")


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
