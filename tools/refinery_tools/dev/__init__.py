"""Development tools: the bench, the Lambda cold-start emulation, the demo, a fake Cloud Controller, the
real-server launchers (InfluxDB, VictoriaMetrics, Prometheus, moto, Tansu) and sample data."""
