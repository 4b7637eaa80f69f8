"""Refinery's tooling: the ``refinery`` command and what only developers and operators run.

Nothing here is shipped to Lambda: the functions run the runtime package ``refinery`` (layers/refinery).
``refinery_tools.dev`` holds the development tools (bench, cold-start emulation, demo, fake Cloud
Controller, real-server launchers, samples); ``refinery_tools.localkafka`` the local Kafka loop.
"""
