"""Generator service entry point (container command): ``python services/generator/main.py``.

Configured entirely by ``CUTALIGN_KAFKA_*``, ``CUTALIGN_POLICY_*`` and ``CUTALIGN_GENERATOR_*``; the service
itself lives in ``cutalign.generator.service``.
"""

from cutalign.generator.service import main

if __name__ == "__main__":
    main()
