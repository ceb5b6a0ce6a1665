"""The gateway: clients talk HTTP to it; it picks each request's arm and asks a worker of that arm over gRPC.

The contract, in a few lines:

- ``caravan gateway --model M`` serves ``POST /predict`` (``caravan serve``'s bodies plus the unit field,
  :mod:`.bodies`), ``POST /feedback`` (``{"request_id", "reward": 0|1}``), ``/health`` and ``/metrics``
  (:mod:`.app`). Answers carry the scores, ``arm``, ``model`` (the artifact that answered) and ``request_id``.
- A request's arm is sticky by unit (:mod:`.routing`, on :func:`caravan.experiments.assign.assign`); the
  experiment document is followed live and, under policy ``thompson``, the weights follow every gateway's
  merged reward counters (:mod:`.follow`, :mod:`.state`); those threads never die (:mod:`.loop`).
- Request ids are HMAC-signed and carry their arm (:mod:`.signing`), so ``/feedback`` trusts nothing else
  the client says; the key comes from caravan's secrets source and is never logged.
- Workers come from ``--worker ARM=host:port`` or Consul's health API; one pooled gRPC channel per worker,
  a deadline per request, failover to the arm's next healthy worker, and the production arm when an arm has
  none left (:mod:`.workers`).
- ``--enrich module:function`` adds features from the unit before the worker call (:mod:`.enrich_parquet` is
  an example: user features from a Parquet table held in memory).
- Nothing here is imported by lower layers; the gateway never loads a model itself.
"""
