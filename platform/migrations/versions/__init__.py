"""One module per schema revision, oldest first: 0001 is the schema as it stood before it was versioned."""
