"""ingest: the event contract and everything that moves events without losing one.

The event schema and its validation (``events``, ``codec``, ``validation``), the Kafka
producer with its local journal and the consumer with its dead-letter topic (``producer``,
``journal``, ``consumer``, ``dlq``, ``transport``, ``broker``), the parquet log store and
the joins learners train on (``logstore``, ``joins``, ``sessions``), and replay of click
logs in other formats (``replay``, ``jsonl_log``, ``adapters``). It imports nothing else of
clickloop's.
"""
