"""The shared Kafka runtime: envelope, producer, consumers, outbox, inbox, retry and dead-letter."""
