"""The recipient API: FHIR R4 Tasks over HTTPS for recipients (WIJ teams, providers) that do not run Kafka."""
