"""The two Lambda handlers, side by side: ``enricher`` (Kafka batches -> points) and ``metadata_refresh``
(Cloud Controller -> snapshot in S3). Each imports only what its function runs."""
