"""Outbound notification adapters (e-mail)."""
