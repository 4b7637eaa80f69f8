"""Refinery: serverless enrichment of Cloud Foundry Firehose envelopes into InfluxDB points."""

__version__ = "0.1.0"
