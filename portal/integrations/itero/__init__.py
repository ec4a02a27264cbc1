"""iTero (Align's DPMS API): the adapter, its wire shapes, and the Rx sent from a case."""
