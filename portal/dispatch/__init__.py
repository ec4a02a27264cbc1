"""Sending approved cases to labs: the dispatch outbox, validation, and the delivery rules."""
