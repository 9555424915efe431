"""Production feedback ingestion: users' judgments of the served policy, onto the judgments topic.

``event`` is the request body and its polarity rule, ``ratelimit`` the per-source token buckets, ``versions``
the policy versions feedback may be about, ``publisher`` the group-commit publisher, ``app`` the HTTP server.
"""
