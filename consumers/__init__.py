"""consumers: arrives with the analytics issue."""
