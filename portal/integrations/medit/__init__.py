"""Medit Link through its OAuth 2 API: the adapter and its wire shapes."""
