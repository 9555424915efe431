"""The embedded demo: a verifiable counting task small enough for a from-scratch model on CPU (``task``),
its warm-started base model cached in S3 (``basemodel``, ``warmstart``), and ``cutalign demo`` (``app``)."""
