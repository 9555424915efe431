"""Everything cutalign submits to a Kubernetes cluster: training jobs built in code and offline validation."""
