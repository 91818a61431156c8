"""The conversation chain: one Faust agent per module, each step an Avro event on its own topic."""
