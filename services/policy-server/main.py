"""Policy server entry point (KServe model server of the embedded policy).

Run from a checkout: ``python services/policy-server/main.py``.

The container runs ``python -m cutalign.policy.server`` (services/policy-server/Dockerfile);
this thin script is the same entry for a checkout, configured entirely by ``CUTALIGN_*`` env.
"""

from cutalign.policy.server import main

if __name__ == "__main__":
    main()
