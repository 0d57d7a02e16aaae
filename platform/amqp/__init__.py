"""The cloud front of the core: the AMQP server and front, broker names, accounts and sessions, the blob store."""
