"""3Shape TRIOS by export: reading an order export, and the watched import folder."""
