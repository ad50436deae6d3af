"""The referrer gateway: HTTPS (FHIR and JSON) and MLLP (HL7 v2) in front of the referrers' Kafka topics.

A referrer whose system speaks no Kafka hands its referral to the gateway, which checks it at once with the
channel's own adapter, writes it unchanged to `referrals.<channel>.v1` (acks=all) and only then answers yes.
Intake does the rest exactly as for a referral written to Kafka directly.
"""
