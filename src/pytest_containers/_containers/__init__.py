"""The containers layer: a declaration's keywords checked (``spec``), the running
container's handle (``container``), its files (``copy``), its log (``logs``), the networks
(``networks``), what waits read (``probes``; the strategies are the public
``pytest_containers.wait``), and engine and container faults said in one line
(``faults``)."""
