#!/bin/sh
# Alertmanager of the stack: writes its configuration from the template (alertmanager.yml beside
# this file, mounted at /etc/alertmanager/alertmanager.yml) into a private folder, then runs it.
#
# Receivers, from the same variables as the pipeline's run-failure sensor (.env.example, "Alerts"):
#   QUADRA_ALERT_WEBHOOK_URL_FILE   a file holding the webhook's URL (a secret: it may hold a token)
#   QUADRA_ALERT_SMTP_HOST, _PORT (587), _TLS (starttls | ssl | none), _FROM, _TO (comma-separated),
#   QUADRA_ALERT_SMTP_USER with QUADRA_ALERT_SMTP_PASSWORD_FILE (Alertmanager reads that file itself)
#   QUADRA_ALERT_SECRETS_DIR        a folder where `webhook_url` and `smtp_password`, when present,
#                                   stand for the two _FILE variables (the stack's deploy/secrets/alertmanager/)
# None set: no receiver; alerts are still shown in Alertmanager's UI.
#
# The URL is read from its file by awk and written only into the configuration, in a folder only
# this user can read (QUADRA_ALERTMANAGER_CONFIG, default /run/alertmanager/alertmanager.yml: mount
# a tmpfs there); it is never in an environment variable, on a command line or in a log.
# Arguments are passed on to Alertmanager (e.g. --storage.path=/alertmanager). For tests:
# QUADRA_ALERTMANAGER_RENDER_ONLY=1 writes the configuration and stops.
set -eu
template="${QUADRA_ALERTMANAGER_TEMPLATE:-/etc/alertmanager/alertmanager.yml}"
config="${QUADRA_ALERTMANAGER_CONFIG:-/run/alertmanager/alertmanager.yml}"

fail() { echo "alertmanager: $*" >&2; exit 1; }

# A value that goes between single quotes in YAML: no quote, no line break.
plain() {
  case "$2" in
    *"'"* | *'
'*) fail "$1 holds a quote or a line break" ;;
  esac
}

[ -r "$template" ] || fail "the template $template is missing (mount deploy/prometheus/alertmanager.yml there)"
keep=""
webhook_file="${QUADRA_ALERT_WEBHOOK_URL_FILE:-}"
# The Compose stack mounts the operator's folder of receiver secrets (QUADRA_ALERT_SECRETS_DIR):
# a `webhook_url` there is the webhook, a `smtp_password` the SMTP login's password, unless the
# variables above name other files.
secrets_dir="${QUADRA_ALERT_SECRETS_DIR:-}"
if [ -z "$webhook_file" ] && [ -n "$secrets_dir" ] && [ -e "$secrets_dir/webhook_url" ]; then
  webhook_file="$secrets_dir/webhook_url"
fi
if [ -z "${QUADRA_ALERT_SMTP_PASSWORD_FILE:-}" ] && [ -n "$secrets_dir" ] && [ -e "$secrets_dir/smtp_password" ]; then
  export QUADRA_ALERT_SMTP_PASSWORD_FILE="$secrets_dir/smtp_password"
fi
if [ -n "$webhook_file" ]; then
  [ -s "$webhook_file" ] || fail "QUADRA_ALERT_WEBHOOK_URL_FILE=$webhook_file is missing or empty"
  keep="$keep webhook"
fi
require_tls=true
if [ -n "${QUADRA_ALERT_SMTP_HOST:-}" ]; then
  : "${QUADRA_ALERT_SMTP_FROM:?QUADRA_ALERT_SMTP_HOST is set: set QUADRA_ALERT_SMTP_FROM too}"
  : "${QUADRA_ALERT_SMTP_TO:?QUADRA_ALERT_SMTP_HOST is set: set QUADRA_ALERT_SMTP_TO too}"
  export QUADRA_ALERT_SMTP_PORT="${QUADRA_ALERT_SMTP_PORT:-587}"
  case "$QUADRA_ALERT_SMTP_PORT" in '' | *[!0-9]*) fail "QUADRA_ALERT_SMTP_PORT must be a number" ;; esac
  case "${QUADRA_ALERT_SMTP_TLS:-starttls}" in
    starttls) require_tls=true ;;
    none) require_tls=false ;;
    # Alertmanager speaks TLS from the first byte on port 465 (and only there).
    ssl) require_tls=false; [ "$QUADRA_ALERT_SMTP_PORT" = 465 ] || fail "QUADRA_ALERT_SMTP_TLS=ssl needs QUADRA_ALERT_SMTP_PORT=465 (Alertmanager's implicit TLS)" ;;
    *) fail "QUADRA_ALERT_SMTP_TLS must be starttls, ssl or none" ;;
  esac
  for name in QUADRA_ALERT_SMTP_HOST QUADRA_ALERT_SMTP_FROM QUADRA_ALERT_SMTP_TO QUADRA_ALERT_SMTP_USER QUADRA_ALERT_SMTP_PASSWORD_FILE; do
    eval "plain $name \"\${$name:-}\""
  done
  keep="$keep email"
  if [ -n "${QUADRA_ALERT_SMTP_USER:-}" ]; then
    [ -s "${QUADRA_ALERT_SMTP_PASSWORD_FILE:-}" ] || fail "QUADRA_ALERT_SMTP_USER is set: QUADRA_ALERT_SMTP_PASSWORD_FILE must name its password's file"
    keep="$keep emailauth"
  fi
fi
export QUADRA_ALERT_SMTP_REQUIRE_TLS="$require_tls"

umask 077
mkdir -p "$(dirname "$config")"
case "$keep" in
  *emailauth*)
    # Alertmanager 0.25 reads auth_password_file as it is: a trailing newline would be part of
    # the password. It gets a copy without (the project's rule for every secret file), beside the
    # configuration. printf is the shell's own: the password is on no command line.
    password_copy="$(dirname "$config")/smtp_password"
    printf '%s' "$(cat "$QUADRA_ALERT_SMTP_PASSWORD_FILE")" > "$password_copy"
    export QUADRA_ALERT_SMTP_PASSWORD_FILE="$password_copy" ;;
esac
awk -v keep=" $keep " -v url_file="$webhook_file" '
  BEGIN {
    if (url_file != "") {
      if ((getline url < url_file) <= 0) { print "alertmanager: cannot read QUADRA_ALERT_WEBHOOK_URL_FILE" > "/dev/stderr"; exit 2 }
      close(url_file)
      sub(/\r$/, "", url)
      if (url !~ /^https?:\/\/[^\/ ]/ || url ~ /[ \t'\'']/) {
        print "alertmanager: the URL in QUADRA_ALERT_WEBHOOK_URL_FILE is not an http(s) URL without spaces or quotes (not shown: it may hold a token)" > "/dev/stderr"
        exit 2
      }
    }
    value["__QUADRA_ALERT_WEBHOOK_URL__"] = url
    n = split("QUADRA_ALERT_SMTP_HOST QUADRA_ALERT_SMTP_PORT QUADRA_ALERT_SMTP_FROM QUADRA_ALERT_SMTP_TO QUADRA_ALERT_SMTP_USER QUADRA_ALERT_SMTP_PASSWORD_FILE QUADRA_ALERT_SMTP_REQUIRE_TLS", names, " ")
    for (i = 1; i <= n; i++) value["__" names[i] "__"] = ENVIRON[names[i]]
  }
  {
    line = $0
    if (match(line, /^#[a-z]+#/)) {
      tag = substr(line, 2, RLENGTH - 2)
      if (!index(keep, " " tag " ")) { print line; next }
      line = substr(line, RLENGTH + 1)
    } else if (line ~ /^[ \t]*#/) { print line; next }
    for (key in value) {
      out = ""
      while ((at = index(line, key)) > 0) { out = out substr(line, 1, at - 1) value[key]; line = substr(line, at + length(key)) }
      line = out line
    }
    print line
  }
' "$template" > "$config.tmp" || { rm -f "$config.tmp"; exit 1; }
mv "$config.tmp" "$config"
echo "alertmanager: configuration written to $config (receivers:${keep:- none, alerts only in the UI})" >&2

[ "${QUADRA_ALERTMANAGER_RENDER_ONLY:-}" = 1 ] && exit 0
if [ -n "${ALERTMANAGER_BIN:-}" ]; then bin="$ALERTMANAGER_BIN"
elif command -v alertmanager >/dev/null 2>&1; then bin=alertmanager
else bin=prometheus-alertmanager  # Debian's name
fi
exec "$bin" --config.file="$config" "$@"
