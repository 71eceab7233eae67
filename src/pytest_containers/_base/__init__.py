"""The base layer: pure, pytest-free and engine-free primitives every layer above uses:
file locks, state files and the private cache dir (``locks``), image references as Docker
normalises them (``reference``), the option table and its resolution (``settings``), and
the record of an image in the engine (``image``)."""
