"""Consumers of the event topics: the ClickHouse sink and its migrations."""
