"""edge: arrives with the conversation issue."""
