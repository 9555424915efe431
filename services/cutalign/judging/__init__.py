"""The judge service: Samples from Kafka are judged by the configured plug-in and published as Judgments.

``calls`` runs judge calls concurrently with deadlines and retries, ``metrics`` holds the Prometheus metrics,
``service`` is the Kafka consume-judge-publish loop, ``kserve_model`` serves the same judge synchronously,
``cli`` registers ``cutalign judge serve`` / ``cutalign judge kserve``.
"""
