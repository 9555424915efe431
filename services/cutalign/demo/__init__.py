"""The embedded demo: a verifiable counting task small enough for a from-scratch model on CPU."""
