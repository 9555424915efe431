"""Target builder entry point (container command): ``python services/target-builder/main.py``.

Configured entirely by ``CUTALIGN_KAFKA_*``, ``CUTALIGN_S3_*`` and ``CUTALIGN_BUILDER_*``; the service itself
lives in ``cutalign.builder.service``.
"""

from cutalign.builder.service import main

if __name__ == "__main__":
    main()
