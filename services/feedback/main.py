"""Feedback ingestion service (POST /v1/feedback) entry point: ``python services/feedback/main.py``.

The container runs ``python -m cutalign.feedback.app`` (services/feedback/Dockerfile);
this thin script is the same entry for a checkout, configured entirely by ``CUTALIGN_*`` env.
"""

from cutalign.feedback.app import main

if __name__ == "__main__":
    main()
