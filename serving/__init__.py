"""The HTTP layer of service.py (BentoML, Starlette); it imports ``ensemble``, never the other way round.

- ``serving.app``: start-up checks, the models behind each route, and ``install`` (everything around the APIs);
- ``serving.api``: the routes' parameter types, each body read once, the front door's rules from the signatures;
- ``serving.guard``: ``FrontDoor``, the ASGI middleware before every route (methods, sizes, timeouts, error shape);
- ``serving.inputs``: pair arrays and ``.npz`` uploads into uint8 pairs or clear 4xx errors;
- ``serving.answers``, ``serving.openapi``: the answer models, and ``/docs.json`` (BentoML's document, corrected);
- ``serving.scoring``, ``serving.coalesce``: score rows, in this worker or through the Scorer service;
- ``serving.settings``: the ``DIGIT_COMPARE_*`` settings, one typed object;
- ``serving.webui``: the web page at ``/ui``; ``serving.shutdown``: the Scorer's drain on SIGTERM;
- ``serving.model_metrics``: what the service sees on ``/metrics``: its answers, refusals and reference;
- BentoML 1.4.40's defects, one module each: ``serving.traffic`` (request timers), ``serving.metrics`` (unbounded
  ``/metrics`` labels), ``serving.errors`` (client errors logged as tracebacks); ``serving.memory``: tracemalloc.
"""
