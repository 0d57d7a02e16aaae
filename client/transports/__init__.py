"""How the client reaches a platform: one Transport interface (base), over HTTP, in-process, AMQP."""
