"""The policy: the model being aligned — how it is identified, loaded, served, called and promoted.

* ``version``: a deterministic sha256 over a checkpoint directory — the identity every Sample records.
* ``loading``: a base model, a LoRA adapter over a base, or a merged checkpoint, from a directory or ``s3://``.
* ``generation``: batched greedy/sampled decoding with stop sequences (serving and offline evaluation).
* ``batching``: collects requests that arrive together into one batch, off the event loop.
* ``model`` / ``routes`` / ``server``: the embedded KServe server (``python -m cutalign.policy.server``).
* ``client``: ``PolicyClient`` on ``huggingface_hub.InferenceClient`` (TGI-native or OpenAI routes).
* ``promotion``: publishing a new policy release (see that module for how a checkpoint reaches serving).
* ``launcher``: start the embedded server as a subprocess from another program (tests, demo, benchmarks).
"""
