"""The pytest side: fixtures and factories (``fixtures``), markers read at collection
(``markers``), the per-process state and session (``state``, ``session``), what pytest prints
(``reporting``, ``run_report``, ``terminal``, ``progress``), the tests this process runs next
(``lookahead``), and services in the pytest run (``service_hooks``). The only layer that
imports pytest (with ``plugin.py`` above it)."""
