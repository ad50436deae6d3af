"""Routing: the Groningen policy as pure rules, and the service that applies it to each referral."""
