#!/bin/sh
# Writes the stack's secrets file (default deploy/.env; git-ignored) with fresh random values,
# mode 600, if none exists; an existing file is never touched. Needs only openssl.
# Keys are PEM text with "\n" for each line break (the settings read that form).
set -eu
out="${1:-deploy/.env}"
if [ -e "$out" ]; then
  echo "deploy-secrets: $out exists; leaving it as it is"
  exit 0
fi
command -v openssl >/dev/null 2>&1 || { echo "deploy-secrets: openssl is needed to make the secrets; nothing was written" >&2; exit 1; }
umask 077
pem() { openssl genpkey "$@" 2>/dev/null | awk '{printf "%s%s", $0, "\\n"}'; }
hex() { openssl rand -hex "$1"; }
tmp="$out.tmp.$$"
trap 'rm -f "$tmp"' EXIT
{
  echo "# Secrets of the Compose stack (deploy/compose/compose.yaml), made by make deploy-secrets"
  echo "# on $(date -u +%Y-%m-%dT%H:%M:%SZ). Keep a copy in the secret store; never commit it."
  echo "POSTGRES_PASSWORD=$(hex 24)"
  echo "DAGSTER_DB_PASSWORD=$(hex 24)"
  echo "QUADRA_DB_PASSWORD=$(hex 24)"
  echo "MLFLOW_DB_PASSWORD=$(hex 24)"
  echo "MLFLOW_ADMIN_PASSWORD=$(hex 24)"
  echo "MLFLOW_FLASK_SERVER_SECRET_KEY=$(hex 32)"
  echo "QUADRA_SECRET_KEY=$(hex 32)"
  printf "QUADRA_MODEL_SIGNING_KEY='%s'\n" "$(pem -algorithm EC -pkeyopt ec_paramgen_curve:P-256)"  # printf: dash's echo would turn each \n into a line break
  printf "QUADRA_BACKUP_SIGNING_KEY='%s'\n" "$(pem -algorithm ed25519)"
} > "$tmp"
# Every value made (an openssl failure inside $(...) would leave one empty).
if grep -Eq "^[A-Z0-9_]+=(''|)$" "$tmp"; then
  echo "deploy-secrets: could not make every secret (openssl failed); nothing was written" >&2
  exit 1
fi
mv "$tmp" "$out"
trap - EXIT
echo "deploy-secrets: wrote $out (mode 600)"
