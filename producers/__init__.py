"""producers: arrives with the conversation issue."""
