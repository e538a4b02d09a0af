"""Everything that puts messages on queues: the command line, the scheduler, the webhook receiver."""
