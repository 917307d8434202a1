"""`make deploy-secrets`: the Compose stack's secrets, one file each, in a folder per identity.

    python deploy/compose/make_secrets.py [--dir deploy/secrets] [--from-env deploy/.env]

Each process of the stack reads only the files of its identity (compose.yaml's `secrets:`, and
the run launcher's mounts for run containers), through the `*_FILE` settings: no secret is in
an environment, a command line or a log. What is made, by identity (folder):

    postgres/    the superuser's password (the database server's own)
    db-init/     the superuser's and every role's password (the one-shot job that makes the roles)
    broker/      RabbitMQ's user, as its config file
    objects/     SeaweedFS's S3 identities (one per identity below, each scoped to its buckets)
    mlflow/      MLflow's database owner, its admin password and Flask secret, the passwords of the
                 users it makes (pipeline, reader), its S3 credentials
    webserver/   Dagster's storage (a libpq passfile), read access to the run logs bucket
    daemon/      Dagster's storage
    wal/         the replication role that streams PostgreSQL's WAL into the archive
    code/        Dagster's storage, the alias sensor's read-only MLflow user and alias-table role
    training/    what training, sweep and promotion runs and the Celery workers hold: the model
                 signing key, the project database's owner role, the MLflow pipeline user, S3
                 credentials for the shared bucket, the broker
    backup/      what backup runs hold: the backup signing key, the secret key, read-only dump
                 roles, the catalogue role, read-only S3 credentials (writes: the logs and the
                 off-site bucket), the replication role for base backups
    serving/     the online service: its bearer token, the MLflow reader, the model keyring
    exporter/    the metrics exporter: a read-only role (Dagster's storage, the training tables),
                 the MLflow reader
    alertmanager/ made empty: the alert receivers' secrets, when the operator adds them
                 (webhook_url, smtp_password; README, "Alerts"); only Alertmanager reads them
    (training/ and backup/ also hold keyrings: the public keys that verify model versions and
    backups, the current ones and, after `--rotate`, the retired ones.)

Files are mode 600 in folders of mode 700; `--owners` (what `make deploy-secrets` passes) makes
each folder's files owned by the uid its container runs as, so a non-root process reads them.
An existing folder is never overwritten: a file that is missing is made (an upgrade adds the
new ones), the rest are kept. `--from-env` takes the secrets of an older stack's `deploy/.env`
(passwords the database already holds, the signing keys) into the files, once.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
from pathlib import Path
from urllib.parse import quote

HOST_DB, PORT_DB = "postgres", 5432
#: PostgreSQL roles whose passwords db-init sets (db-init/<role>_password).
ROLES = ("dagster", "quadra", "mlflow", "backup", "catalogue", "aliases", "wal", "monitor")
BROKER_USER = "quadra"
#: S3 identities: (access key, buckets it may read, buckets it may write).
S3_IDENTITIES = {
    "mlflow": (["quadra-mlflow"], ["quadra-mlflow"]),
    "training": (["quadra-shared", "quadra-logs"], ["quadra-shared", "quadra-logs"]),
    "backup": (["quadra-shared", "quadra-mlflow"], ["quadra-logs", "quadra-offsite"]),
    "code": ([], ["quadra-logs"]),
    "webserver": (["quadra-logs"], []),
}
#: Old deploy/.env names -> where their value goes.
FROM_ENV = {
    "POSTGRES_PASSWORD": "postgres_password",
    "DAGSTER_DB_PASSWORD": "dagster_password",
    "QUADRA_DB_PASSWORD": "quadra_password",
    "MLFLOW_DB_PASSWORD": "mlflow_password",
    "MLFLOW_ADMIN_PASSWORD": "mlflow_admin_password",
    "MLFLOW_FLASK_SERVER_SECRET_KEY": "mlflow_flask_secret_key",
    "QUADRA_SECRET_KEY": "secret_key",
    "QUADRA_MODEL_SIGNING_KEY": "model_signing_key",
    "QUADRA_BACKUP_SIGNING_KEY": "backup_signing_key",
}


def token(nbytes: int = 24) -> str:
    return secrets.token_hex(nbytes)


def pem_private(algorithm: str) -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519

    key = ec.generate_private_key(ec.SECP256R1()) if algorithm == "ec" else ed25519.Ed25519PrivateKey.generate()
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def public_of(private_pem: str) -> str:
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(private_pem.encode(), password=None)
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def read_old_env(path: Path) -> dict[str, str]:
    """The values of an older stack's deploy/.env (NAME=value, keys as PEM with "\\n")."""
    values = {}
    for line in path.read_text().splitlines():
        if "=" not in line or line.lstrip().startswith("#"):
            continue
        name, value = line.split("=", 1)
        value = value.strip().strip("'").strip('"').replace("\\n", "\n")
        if name.strip() in FROM_ENV and value:
            values[FROM_ENV[name.strip()]] = value
    return values


def base_values(old: dict[str, str]) -> dict[str, str]:
    """Every primary secret: from the old file when it had it, fresh otherwise."""
    fresh = {
        "postgres_password": token(), "dagster_password": token(), "quadra_password": token(),
        "mlflow_password": token(), "backup_password": token(), "catalogue_password": token(),
        "aliases_password": token(), "wal_password": token(), "monitor_password": token(), "mlflow_admin_password": token(), "mlflow_flask_secret_key": token(32),
        "mlflow_pipeline_password": token(), "mlflow_reader_password": token(), "secret_key": token(32),
        "broker_password": token(), "model_signing_key": "", "backup_signing_key": "",
        **{f"s3_{name}_secret": token(20) for name in S3_IDENTITIES},
    }
    values = {**fresh, **old}
    values["model_signing_key"] = values["model_signing_key"] or pem_private("ec")
    values["backup_signing_key"] = values["backup_signing_key"] or pem_private("ed25519")
    return values


def pg_url(user: str, password: str, database: str) -> str:
    return f"postgresql+psycopg2://{user}:{quote(password, safe='')}@{HOST_DB}:{PORT_DB}/{database}"


def aws_credentials(identity: str, v: dict[str, str]) -> str:
    return f"[default]\naws_access_key_id = quadra-{identity}\naws_secret_access_key = {v[f's3_{identity}_secret']}\n"


def layout(v: dict[str, str]) -> dict[str, dict[str, str]]:
    """identity folder -> file name -> content."""
    pgpass = f"{HOST_DB}:{PORT_DB}:dagster:dagster:{v['dagster_password']}\n"
    s3 = {"identities": [
        {"name": f"quadra-{name}",
         "credentials": [{"accessKey": f"quadra-{name}", "secretKey": v[f"s3_{name}_secret"]}],
         "actions": sorted({f"Read:{b}" for b in reads} | {f"List:{b}" for b in reads} | {f"Write:{b}" for b in writes}
                           | {f"Read:{b}" for b in writes} | {f"List:{b}" for b in writes})}
        for name, (reads, writes) in S3_IDENTITIES.items()
    ]}
    return {
        "postgres": {"postgres_password": v["postgres_password"]},
        "db-init": {
            "postgres_password": v["postgres_password"],
            **{f"{role}_password": v[f"{role}_password"] for role in ROLES},
            "database_url": pg_url("quadra", v["quadra_password"], "quadra"),
        },
        "broker": {"20-quadra.conf": f"default_user = {BROKER_USER}\ndefault_pass = {v['broker_password']}\n"},
        "objects": {"s3.json": json.dumps(s3, indent=2) + "\n"},
        "mlflow": {
            "backend_store_uri": pg_url("mlflow", v["mlflow_password"], "mlflow"),
            "admin_password": v["mlflow_admin_password"],
            "flask_secret_key": v["mlflow_flask_secret_key"],
            "pipeline_password": v["mlflow_pipeline_password"],
            "reader_password": v["mlflow_reader_password"],
            "aws_credentials": aws_credentials("mlflow", v),
        },
        "webserver": {"dagster.pgpass": pgpass, "aws_credentials": aws_credentials("webserver", v)},
        "daemon": {"dagster.pgpass": pgpass},
        # Streams the WAL (a replication connection only).
        "wal": {"wal.pgpass": f"{HOST_DB}:{PORT_DB}:*:quadra_wal:{v['wal_password']}\n"},
        "code": {
            "dagster.pgpass": pgpass,
            "database_url": pg_url("quadra_aliases", v["aliases_password"], "quadra"),
            "mlflow_password": v["mlflow_reader_password"],
            "aws_credentials": aws_credentials("code", v),
        },
        "training": {
            "dagster.pgpass": pgpass,
            "database_url": pg_url("quadra", v["quadra_password"], "quadra"),
            "mlflow_password": v["mlflow_pipeline_password"],
            "model_signing_key": v["model_signing_key"],
            # Public keys that verify versions: the current one, and retired ones after a rotation.
            "model-keyring.pem": public_of(v["model_signing_key"]),
            "aws_credentials": aws_credentials("training", v),
            "celery_broker_url": f"amqp://{BROKER_USER}:{quote(v['broker_password'], safe='')}@broker:5672//",
        },
        "backup": {
            "dagster.pgpass": pgpass,
            "database_url": pg_url("quadra_catalogue", v["catalogue_password"], "quadra"),
            "backup_database_url": pg_url("quadra_backup", v["backup_password"], "quadra"),
            "mlflow_backend_uri": pg_url("quadra_backup", v["backup_password"], "mlflow"),
            "backup_signing_key": v["backup_signing_key"],
            "secret_key": v["secret_key"],
            # Base backups into the continuous archive (a replication connection).
            "wal_url": pg_url("quadra_wal", v["wal_password"], "postgres"),
            "aws_credentials": aws_credentials("backup", v),
            # The drill checks the champion's signature; verify and restore check older backups.
            "model-keyring.pem": public_of(v["model_signing_key"]),
            "backup-keyring.pem": public_of(v["backup_signing_key"]),
        },
        # The online service: the token its clients send, MLflow's reader (it follows the alias),
        # the public keys that verify each version before it is served.
        "serving": {
            "serving_token": token(32),
            "mlflow_password": v["mlflow_reader_password"],
            "model-keyring.pem": public_of(v["model_signing_key"]),
        },
        # The exporter reads and never writes: Dagster's storage and the training tables as
        # quadra_monitor (db-init/dagster-grants.sql, grants.sql), the registry as its reader.
        "exporter": {
            "dagster.pgpass": f"{HOST_DB}:{PORT_DB}:dagster:quadra_monitor:{v['monitor_password']}\n",
            "database_url": pg_url("quadra_monitor", v["monitor_password"], "quadra"),
            "mlflow_password": v["mlflow_reader_password"],
        },
        # The receivers' secrets (a webhook URL with its token, an SMTP password) are the
        # operator's to put here: nothing is made, the folder is.
        "alertmanager": {},
        # Public halves, for a verify-only host and the keyrings of a later rotation: not secret.
        "public": {
            "model-signing.pub": public_of(v["model_signing_key"]),
            "backup-signing.pub": public_of(v["backup_signing_key"]),
        },
    }


def existing_values(root: Path) -> dict[str, str]:
    """The primary secrets an existing folder already holds, so files added by an upgrade agree
    with the ones kept (the same passwords the database and MLflow already have)."""
    def read(relative: str) -> str | None:
        path = root / relative
        return path.read_text().strip() if path.is_file() else None

    found: dict[str, str | None] = {
        "postgres_password": read("postgres/postgres_password"),
        "mlflow_admin_password": read("mlflow/admin_password"),
        "mlflow_flask_secret_key": read("mlflow/flask_secret_key"),
        "mlflow_pipeline_password": read("mlflow/pipeline_password"),
        "mlflow_reader_password": read("mlflow/reader_password"),
        "secret_key": read("backup/secret_key"),
        "model_signing_key": read("training/model_signing_key"),
        "backup_signing_key": read("backup/backup_signing_key"),
    }
    for role in ROLES:
        found[f"{role}_password"] = read(f"db-init/{role}_password")
    conf = read("broker/20-quadra.conf") or ""
    for line in conf.splitlines():
        if line.startswith("default_pass"):
            found["broker_password"] = line.split("=", 1)[1].strip()
    try:
        for identity in json.loads(read("objects/s3.json") or "{}").get("identities", []):
            name = identity["name"].removeprefix("quadra-")
            found[f"s3_{name}_secret"] = identity["credentials"][0]["secretKey"]
    except (ValueError, KeyError, IndexError):
        pass
    return {k: v for k, v in found.items() if v}


def write(root: Path, files: dict[str, dict[str, str]]) -> list[str]:
    made = []
    old_umask = os.umask(0o077)
    try:
        root.mkdir(parents=True, exist_ok=True)
        root.chmod(0o700)
        for folder, contents in files.items():
            (root / folder).mkdir(exist_ok=True)
            (root / folder).chmod(0o700)
            for name, content in contents.items():
                path = root / folder / name
                if path.exists():
                    continue
                staged = path.with_name(f".{name}.tmp")
                staged.write_text(content)
                staged.chmod(0o600)
                os.replace(staged, path)
                made.append(f"{folder}/{name}")
    finally:
        os.umask(old_umask)
    return made


KEYRINGS = {  # signing key file -> the keyring files that keep its public key after a rotation
    "training/model_signing_key": ("training/model-keyring.pem", "backup/model-keyring.pem", "serving/model-keyring.pem"),
    "backup/backup_signing_key": ("backup/backup-keyring.pem",),
}


def rotate(root: Path) -> list[str]:
    """New signing keys; the old ones' public halves stay in the keyrings (every older backup and
    model version still verifies), the old private keys go. Returns what was done."""
    done = []
    old_umask = os.umask(0o077)
    try:
        for signing, keyrings in KEYRINGS.items():
            path = root / signing
            old = path.read_text()
            new = pem_private("ec" if "model" in signing else "ed25519")
            for keyring in keyrings:
                ring = root / keyring
                text = ring.read_text() if ring.is_file() else ""
                for pem in (public_of(old), public_of(new)):
                    if pem not in text:
                        text = text.rstrip("\n") + ("\n" if text.strip() else "") + pem
                staged = ring.with_name(f".{ring.name}.tmp")
                staged.write_text(text)
                staged.chmod(0o600)
                os.replace(staged, ring)
            staged = path.with_name(f".{path.name}.tmp")
            staged.write_text(new)
            staged.chmod(0o600)
            os.replace(staged, path)
            (root / "public" / Path(signing).name.replace("_signing_key", "-signing.pub").replace("_", "-")).write_text(public_of(new))
            done.append(f"{signing}: new key; the old public key kept in {', '.join(keyrings)}")
    finally:
        os.umask(old_umask)
    return done


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, default=Path("deploy/secrets"))
    parser.add_argument("--from-env", type=Path, default=Path("deploy/.env"),
                        help="an older stack's secrets file to take over (default deploy/.env, when it exists)")
    parser.add_argument("--rotate", action="store_true",
                        help="replace both signing keys, keeping the old public keys in the keyrings (make deploy-rotate-keys)")
    args = parser.parse_args(argv)
    if args.rotate:
        if not (args.dir / "training" / "model_signing_key").is_file():
            print(f"deploy-secrets: {args.dir} has no signing keys to rotate (make deploy-secrets first)", file=sys.stderr)
            return 1
        for line in rotate(args.dir):
            print(f"deploy-rotate-keys: {line}")
        return 0
    old: dict[str, str] = {}
    if args.from_env.is_file():
        old = read_old_env(args.from_env)
        missing = sorted(set(FROM_ENV) - {name for name, key in FROM_ENV.items() if key in old})
        if missing:
            print(f"deploy-secrets: {args.from_env} lacks {', '.join(missing)}: fresh values are made for those "
                  "(a database that already holds another password for such a role needs it set by hand)", file=sys.stderr)
    kept = existing_values(args.dir) if args.dir.exists() else {}
    made = write(args.dir, layout(base_values({**old, **kept})))
    if old and made:
        print(f"deploy-secrets: took the secrets of {args.from_env} into {args.dir}/ (passwords, keys); once the stack "
              f"runs on them, delete {args.from_env}: the stack no longer reads it")
    print(f"deploy-secrets: {args.dir}/: {len(made)} file(s) made, the rest kept" if made
          else f"deploy-secrets: {args.dir}/ is complete; nothing changed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
