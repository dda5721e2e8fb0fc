"""Every measuring tool, apart from the product (nothing in ``service.py``, ``serving/``, ``ensemble/``, ``export/``
or ``training/`` imports it, and the Bento leaves it out). Scripts, not tests: their numbers depend on the machine,
so run them on a quiet one and record what they print (docs/speed.md, docs/bench.md, docs/reliability.md).

- ``python -m bench.serve`` (``make bench-serve``): the served product in process and over HTTP -> docs/bench.md;
- ``python -m bench.training`` and ``python -m bench.inference`` (``make bench``): training steps per second per
  architecture, and eager PyTorch against ONNX Runtime (needs the training group);
- ``python -m bench.graph_cost OLD NEW``: two model folders' fused graphs side by side, CPU ms per pair (a retrain
  must not make serving dearer);
- ``python -m bench.naive_server``: the per-request PyTorch server ``bench.serve --url`` compares against;
- ``python -m bench.serve_variants``: service settings side by side;
- ``python -m bench.serve_profile``: where a served answer's CPU goes (py-spy);
- ``python -m bench.service_load``: load with bad requests, maximum-size bodies and large uploads;
- ``python -m bench.soak``: every server process's memory under minutes of load;
- ``python -m bench.json_cap``: what a JSON batch costs to read, by size.

Their parts: ``bench.server``, the one launcher of ``bentoml serve`` (the tests start servers with it too) and the
server's processes read from ``/proc``; ``bench.load``, the request bodies and the closed loop of clients.
"""
