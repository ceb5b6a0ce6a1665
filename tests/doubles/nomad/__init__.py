"""The Nomad double: an in-process Nomad agent that the real ``python-nomad`` drives (see :mod:`.double`).

Modules by concern: ``common`` (constants, records, helpers), ``state`` (the state store and its indexes),
``jobs`` (the job endpoint), ``scheduler`` (placement, blocked evals, rescheduling), ``client`` (running
tasks), ``prestart`` (vault and template hooks), ``faults`` (staged failures), ``reads`` (blocking reads and
logs), ``routes`` (HTTP routing), ``hcl`` (jobspec conversion) and ``templates`` (the template renderer).
"""

from .common import HTTPError, Reply
from .double import NomadDouble
from .hcl import JobSpecError, canonicalize, hcl_to_job

__all__ = ["HTTPError", "JobSpecError", "NomadDouble", "Reply", "canonicalize", "hcl_to_job"]
