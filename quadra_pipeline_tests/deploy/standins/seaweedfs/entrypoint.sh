#!/bin/sh
# The official image's entrypoint contract, in short: started as root, it gives /data to
# `seaweed` (uid 1000) if it is not already its owner and re-runs itself as that user; then the
# first argument picks the weed command, with the official defaults added for the server commands
# (logs to stderr; data in /data); anything else is passed to /usr/bin/weed as it is.
set -eu
if [ "$(id -u)" = 0 ]; then
  if [ "$(stat -c %u:%g /data)" != "$(id -u seaweed):$(id -g seaweed)" ]; then
    echo "entrypoint: giving /data to seaweed (uid $(id -u seaweed))"
    chown -R seaweed:seaweed /data || echo "entrypoint: warning: could not chown /data" >&2
  fi
  exec setpriv --reuid=seaweed --regid=seaweed --init-groups "$0" "$@"
fi
passed() {  # passed -opt ARGS...: is -opt (or -opt=...) among ARGS?
  opt="$1"; shift
  for a in "$@"; do
    case "$a" in "$opt" | "$opt"=*) return 0 ;; esac
  done
  return 1
}
command="${1:-}"
[ $# -gt 0 ] && shift
case "$command" in
  mini) exec /usr/bin/weed -logtostderr=true mini "$@" ;;
  master) exec /usr/bin/weed -logtostderr=true master -mdir=/data -volumePreallocate -volumeSizeLimitMB=1024 "$@" ;;
  volume)
    if passed -max "$@"; then exec /usr/bin/weed -logtostderr=true volume -dir=/data "$@"; fi
    exec /usr/bin/weed -logtostderr=true volume -dir=/data -max=0 "$@" ;;
  server)
    if passed -volume.max "$@"; then
      exec /usr/bin/weed -logtostderr=true server -dir=/data -master.volumePreallocate -master.volumeSizeLimitMB=1024 "$@"
    fi
    exec /usr/bin/weed -logtostderr=true server -dir=/data -volume.max=0 -master.volumePreallocate \
      -master.volumeSizeLimitMB=1024 "$@" ;;
  filer) exec /usr/bin/weed -logtostderr=true filer "$@" ;;
  s3) exec /usr/bin/weed -logtostderr=true s3 -domainName="${S3_DOMAIN_NAME:-}" -key.file="${S3_KEY_FILE:-}" \
    -cert.file="${S3_CERT_FILE:-}" "$@" ;;
  "") exec /usr/bin/weed ;;
  *) exec /usr/bin/weed "$command" "$@" ;;
esac
