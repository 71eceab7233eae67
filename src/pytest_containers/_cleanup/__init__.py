"""The cleanup layer: labels and the sweep of what dead runs left (``sweep``), run
liveness (``liveness``), the watchdog process (``watchdog``), and what keeps one process's
containers from outliving it (``guard``). Imports only the engine and base layers."""
