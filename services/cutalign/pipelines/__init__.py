"""Kubeflow Pipelines v2 definitions of the online loop: pipeline, compiler, multi-iteration driver."""
