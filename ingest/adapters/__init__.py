"""Adapters turn other click-log formats into clickloop events.

Every adapter yields batches of event JSON messages; replay validates them with the same
decoder the Kafka consumer uses, so a log never bypasses the contract.
"""
