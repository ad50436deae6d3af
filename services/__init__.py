"""Verwijshub: the referral hub's services (intake, routing, notifier) and what they share."""
