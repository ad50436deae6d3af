"""What the three services share: settings, Kafka wiring, the embedded broker, logging, pseudonyms."""
