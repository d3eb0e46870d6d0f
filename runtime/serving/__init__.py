"""Serving a model folder from NVIDIA Triton Inference Server, and scoring through it.

- :mod:`runtime.serving.environment`: the ``tritonserver`` that ``nvidia-pytriton`` ships and the interpreter its
  Python backend can embed.
- :mod:`runtime.serving.repository`: a Triton model repository for a model folder (``config.pbtxt``, a version
  named by the manifest's hash).
- :mod:`runtime.serving.triton_model`: the Triton Python model (runs a :class:`~runtime.detector.Detector`).
- :mod:`runtime.serving.client`: :class:`RemoteDetector`, the stream's client of the server (``tritonclient``).

``python -m runtime.serve`` starts a server; ``python -m runtime.stream --server grpc://HOST:PORT`` scores through
one. The client needs the ``serve`` extra (``tritonclient[grpc]``); the server also ``nvidia-pytriton``, installed
with ``--no-deps`` (see ``pyproject.toml``).
"""
