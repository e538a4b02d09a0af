"""Everything that consumes queues: the broker, actors, sync engine, sources and sinks."""
