"""yibao services: enroll, filing, settle, monitor, and the shared Kafka runtime in bus."""
