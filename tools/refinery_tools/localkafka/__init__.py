"""A local Kafka loop without AWS: an event-source mapping emulator and a nozzle-format producer.

* :mod:`.event` — consumer records → the Lambda Kafka event (MSK or self-managed shape);
* :mod:`.acks` — the handler's answer → what to commit and what to deliver again; retry backoff;
* :mod:`.mapping` — the mapping loop: poll, batch, invoke, commit (``refinery consume``);
* :mod:`.stats` — counters, the progress line and the summary table;
* :mod:`.synthetic` — deterministic nozzle-format traffic of a generated foundation;
* :mod:`.producer` — publish envelopes (``refinery produce``);
* :mod:`.connect` — kafka-python clients with errors that name the bootstrap address;
* :mod:`.commands` — the ``consume``, ``produce`` and ``events`` subcommands.
"""
