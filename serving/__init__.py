"""The HTTP layer of service.py: request guard, input parsing, OpenAPI document, web UI routes.

- ``serving.guard``: ``FrontDoor``, the ASGI middleware in front of every route (methods, content types,
  body limits and timeouts, multipart checks, the one error shape, ``/docs.json``);
- ``serving.inputs``: the HTTP limits, the error shape, and the parsing of JSON pairs and ``.npz`` uploads
  into clear 4xx errors;
- ``serving.openapi``: the answers' pydantic models and the service's OpenAPI description;
- ``serving.webui``: the web page at ``/ui`` and its sample pairs;
- ``serving.scoring``: the scorer's rows (both priors' answers in each), calling the scorer (retries, chunks,
  coalesced single pairs, ``serving.coalesce``) and the answers made from its rows;
- ``serving.settings``: the ``DIGIT_COMPARE_*`` settings and the routes' default priors;
- ``serving.metrics``: ``/metrics`` with one label for every path the service does not serve;
- ``serving.errors``: client errors logged as one line.

The BentoML/starlette side: it imports ``ensemble`` (the input contract, the course format, the image
preprocessing), never the other way round; ``ensemble/`` and ``training/`` never import it.
"""
