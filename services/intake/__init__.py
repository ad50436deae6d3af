"""Intake: channel adapters from each referrer's native format to the canonical `Referral`."""
