"""The manager layer: everything one pytest process does with the engine, pytest-free.
The per-process ``manager``, containers started ahead (``early_starts``) and removed off
the tests' path (``removals``), ``scope="run"`` (``run_scope``), resets (``resets``), reuse
across runs (``reuse``), ``--container-prune`` (``prune``), services (``services``) and the
doctor (``doctor``)."""
