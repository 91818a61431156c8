"""The OpenAI-compatible HTTP edge: FastAPI in front of Kafka."""
