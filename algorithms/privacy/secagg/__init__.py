"""POM 2: secure aggregation (masked updates; the aggregator unmasks only the sum)."""
