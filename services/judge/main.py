"""Judge service entry point (container command): ``python services/judge/main.py``.

Configured entirely by ``CUTALIGN_KAFKA_*`` and ``CUTALIGN_JUDGE_*`` (the judge plug-in, its options, retries,
deadline, concurrency, health port); the service itself lives in ``cutalign.judging.service``.
"""

from cutalign.judging.service import main

if __name__ == "__main__":
    main()
