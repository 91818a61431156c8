"""streams: arrives with the conversation issue."""
