"""Sandboxes of the outside systems Lab Manager talks to, for the demo (`make run`) and the tests.

They are not part of the product package: they speak each contract over real HTTP on loopback,
with demo credentials, faults on demand and counters for the tests. server.py is the server stack
they share; lab.py is a lab with an API, vendors.py the scanner vendors (iTero, Medit Link)."""
