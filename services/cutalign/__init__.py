"""cutalign: align language models from natural-language judgments with Contrastive Unlikelihood Training.

The package holds everything the services share: wire schemas (``cutalign.v1``), typed configuration,
the Kafka bus, the S3 artifact store, the CUT objective and trainer, judges, and the local platform.
"""

__version__ = "0.1.0"  # the one version: the package, its images, the chart (tests/test_version.py)
