"""The AMQP transport to the cloud platform: login session, messages, chunked and claim-checked bodies."""
