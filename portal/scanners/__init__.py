"""Scanner integrations: iTero, Medit Link, 3Shape TRIOS exports and plain mesh uploads."""
