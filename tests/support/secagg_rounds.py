"""Steps of a secure-aggregation round driven by hand in the SecAgg tests."""


def exchange_keys(server, parts) -> tuple[dict, dict]:
    """Every participant announces its keys and shares them; returns the server's key broadcast and
    the encrypted shares it delivers to each participant (by name)."""
    for p in parts.values():
        server.receive_announcement(p.advertise_keys())
    broadcast = server.key_broadcast()
    for p in parts.values():
        server.receive_shares(p.share_keys(broadcast))
    return broadcast, server.share_deliveries()
