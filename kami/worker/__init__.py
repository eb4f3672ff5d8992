"""The background worker: outbox jobs and periodic housekeeping."""
