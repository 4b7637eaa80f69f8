"""Recording rules: per-batch aggregates of the enriched points (see README, "Recording rules").

``model`` holds what a rule is, ``loader`` reads and validates the YAML file (bundled or in S3,
reloaded like the metadata snapshot), ``aggregate`` computes a batch's outputs, ``ledger`` keeps per
Kafka partition which offsets the per-batch aggregates cover (durable, in the metadata bucket).
"""
