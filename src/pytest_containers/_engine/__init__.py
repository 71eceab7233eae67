"""The engine layer: where the Docker engine is (``endpoint``), connecting to it and what
it is (``connection``), and the streams read from it that must be cut off (``streams``).
Imports only ``_base`` and ``errors``."""
