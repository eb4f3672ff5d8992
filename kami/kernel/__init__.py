"""Mechanisms with no business words: database, money, ids, clock, errors, outbox."""
