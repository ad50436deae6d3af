"""Notifier: handovers to the one recipient, and the referrer's status events."""
