"""One client module per external system: HTTP, pagination and error translation."""
