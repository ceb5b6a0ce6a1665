"""The Nomad double: an in-process Nomad agent that the real ``python-nomad`` drives (see :mod:`.double`).

Modules by concern: ``common`` (constants, records, helpers), ``state`` (the state store and its indexes),
``jobs`` (the job endpoint, the dispatch-idempotency race), ``scheduler`` (placement, blocked evals,
rescheduling), ``nodes`` (finite nodes, constraints, bin-packing metrics), ``ports`` (each allocation's dynamic
ports and the ``NOMAD_PORT_*`` variables), ``gc`` (job GC), ``client`` (running tasks), ``prestart`` (vault and
template hooks), ``faults`` (staged failures, leader loss), ``reads`` (blocking reads and logs), ``routes`` (HTTP
routing), ``admission`` and ``plan`` (stored form, ``/v1/job/:id/plan``), ``hcl`` (jobspec conversion) and
``templates`` (the template renderer). HTTP helpers shared with the Consul
double are in ``tests/doubles/_http.py``.
"""

from .common import HTTPError, Reply
from .double import NomadDouble
from .hcl import JobSpecError, canonicalize, hcl_to_job

__all__ = ["HTTPError", "JobSpecError", "NomadDouble", "Reply", "canonicalize", "hcl_to_job"]
