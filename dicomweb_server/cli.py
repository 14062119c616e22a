"""Command line: serve, import, migrate."""

from __future__ import annotations

import argparse
import logging
import os
import ssl
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from dicomweb_server import __version__
from dicomweb_server.config import Settings, env_name, load_settings, to_environ
from dicomweb_server.errors import DicomWebError

if TYPE_CHECKING:
    from dicomweb_server.bootstrap import Services
    from dicomweb_server.dimse.scp import Listener as DimseListener

# bootstrap (SQLAlchemy, pydicom) is imported by the commands that need it, so that
# --help, --version and settings errors answer at once.

log = logging.getLogger("dicomweb_server")


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", type=Path, help=f"TOML settings file [env {env_name('config')}]"
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        help=f"folder for blobs and the SQLite index (default ./data) [env {env_name('data_dir')}]",
    )
    parser.add_argument(
        "--database-url",
        help="SQLAlchemy URL of the index, e.g. postgresql+psycopg://user@/db?host=/var/run/"
        f"postgresql (default: SQLite in the data folder) [env {env_name('database_url')}]",
    )


def _settings(args: argparse.Namespace, **extra: object) -> Settings:
    overrides: dict[str, object] = {
        "data_dir": args.data_dir,
        "database_url": args.database_url,
        **extra,
    }
    return load_settings(args.config, None, **overrides)


def _serve(args: argparse.Namespace) -> int:
    from dicomweb_server.bootstrap import prepare

    settings = _settings(
        args,
        host=args.host,
        port=args.port,
        workers=args.workers,
        public_base_url=args.public_base_url,
        trusted_proxies=args.trusted_proxies,
        insecure=True if args.insecure else None,
        log_level=args.log_level,
        **_dimse_overrides(args),
    )
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if not settings.is_loopback_bind():
        if not settings.insecure:
            log.error(
                "refusing to serve on %s: only loopback addresses may be served without "
                "authentication; pass --insecure to override (not for patient data)",
                settings.host,
            )
            return 2
        log.warning("SERVING WITHOUT AUTHENTICATION ON %s (--insecure)", settings.host)
    _check_dimse(settings)
    prepare(settings)
    os.environ.update(to_environ(settings))
    log.info(
        "dicomweb-server %s on http://%s:%d%s (data %s, index %s, %d worker(s))",
        __version__,
        settings.host,
        settings.port,
        settings.dicomweb_root,
        settings.data_dir.resolve(),
        settings.database_url_for_display,
        settings.workers,
    )
    listener = _start_dimse(settings)
    try:
        _run_uvicorn(settings, args)
    finally:
        if listener is not None:
            listener.stop()
            listener.services.close()
    return 0


def _run_uvicorn(settings: Settings, args: argparse.Namespace) -> None:
    import uvicorn

    uvicorn.run(
        "dicomweb_server.web.asgi:app_from_environment",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        proxy_headers=False,
        server_header=False,
        access_log=args.access_log,
        log_level=settings.log_level,
        timeout_keep_alive=30,
    )


# --- dimse ---
def _dimse_overrides(args: argparse.Namespace) -> dict[str, object]:
    return {
        "dimse_enabled": False if args.no_dimse else None,
        "dimse_aet": args.dimse_aet,
        "dimse_port": args.dimse_port,
        "dimse_max_associations": args.dimse_max_associations,
        "dimse_timeout": args.dimse_timeout,
        "dimse_max_pdu": args.dimse_max_pdu,
        "dimse_reject_unknown": True if args.dimse_reject_unknown else None,
        "dimse_tls_cert": args.dimse_tls_cert,
        "dimse_tls_key": args.dimse_tls_key,
        "dimse_tls_ca": args.dimse_tls_ca,
    }


def _check_dimse(settings: Settings) -> None:
    """Bad DIMSE settings stop `serve` at once (exit 2), not later in a worker."""
    from dicomweb_server.services.modalities import parse_modality

    for spec in settings.dimse_modalities:
        parse_modality(spec)
    for name in ("dimse_tls_cert", "dimse_tls_key", "dimse_tls_ca"):
        path = getattr(settings, name)
        if path is not None and not path.is_file():
            raise ValueError(f"{name}: {path} is not a file")


def _start_dimse(settings: Settings) -> DimseListener | None:
    """Exactly one DIMSE listener per `serve`, in this (parent) process: uvicorn's
    worker processes are spawned, so they never inherit it."""
    if not settings.dimse_enabled:
        return None
    from dicomweb_server.bootstrap import build_services
    from dicomweb_server.dimse import scp

    services = build_services(settings)
    try:
        return scp.start(services)
    except ssl.SSLError as exc:
        services.close()
        raise ValueError(f"DIMSE TLS: cannot use the certificate or key: {exc}") from exc
    except OSError as exc:
        services.close()
        raise OSError(
            exc.errno,
            f"DIMSE port {settings.dimse_port}: {exc.strerror or exc} "
            "(address already in use?); choose another with --dimse-port or --no-dimse",
        ) from exc


def _add_dimse_flags(serve: argparse.ArgumentParser) -> None:
    group = serve.add_argument_group("DIMSE gateway")
    group.add_argument(
        "--no-dimse",
        action="store_true",
        help=f"do not start the DIMSE listener [env {env_name('dimse_enabled')}=false]",
    )
    group.add_argument(
        "--dimse-aet", help=f"our AE title (default DICOMWEB) [env {env_name('dimse_aet')}]"
    )
    group.add_argument(
        "--dimse-port",
        type=int,
        help=f"DIMSE port, on the same host as HTTP (default 11112) [env {env_name('dimse_port')}]",
    )
    group.add_argument(
        "--dimse-max-associations",
        type=int,
        help=f"concurrent associations (default 10) [env {env_name('dimse_max_associations')}]",
    )
    group.add_argument(
        "--dimse-timeout",
        type=int,
        help="ACSE/DIMSE/network timeout in seconds (default 60) "
        f"[env {env_name('dimse_timeout')}]",
    )
    group.add_argument(
        "--dimse-max-pdu",
        type=int,
        help=f"maximum PDU size we receive, 0 = unlimited (default 116794) "
        f"[env {env_name('dimse_max_pdu')}]",
    )
    group.add_argument(
        "--dimse-reject-unknown",
        action="store_true",
        help="refuse associations from AE titles that are not known modalities "
        f"[env {env_name('dimse_reject_unknown')}]",
    )
    for name, what in (
        ("cert", "PEM certificate: DIMSE over TLS"),
        ("key", "PEM private key of the certificate"),
        ("ca", "PEM CA file: callers must present a certificate it signed"),
    ):
        group.add_argument(
            f"--dimse-tls-{name}", type=Path, help=f"{what} [env {env_name('dimse_tls_' + name)}]"
        )


def _files(paths: Sequence[Path]) -> Iterator[Path]:
    for path in paths:
        if path.is_file():
            yield path
        elif path.is_dir():
            for root, dirs, names in os.walk(path):
                # Hidden folders (.git, .Trash, ...) are skipped like hidden files.
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for name in sorted(names):
                    if not name.startswith(".") and name.upper() != "DICOMDIR":
                        yield Path(root) / name


_worker_services: Services | None = None


def _init_worker(settings: Settings) -> None:
    from dicomweb_server.bootstrap import build_services

    global _worker_services
    _worker_services = build_services(settings)


def _import_one(path: Path) -> tuple[str, str, str]:
    assert _worker_services is not None
    try:
        outcome = _worker_services.store.store_copy(path)
    except Exception as exc:  # report, never stop a bulk import on one file
        return str(path), "rejected", f"{type(exc).__name__}: {exc}"
    if not outcome.stored:
        return str(path), "rejected", f"0x{outcome.failure_reason or 0:04X} {outcome.message}"
    if outcome.duplicate:
        return str(path), "duplicate", outcome.message
    return str(path), "stored", ""


def _import(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from dicomweb_server.bootstrap import prepare

    settings = _settings(args)
    logging.basicConfig(level=logging.WARNING)
    prepare(settings)
    files = list(_files(args.paths))
    missing = [p for p in args.paths if not p.exists()]
    for path in missing:
        print(f"not found: {path}", file=sys.stderr)
    counts: Counter[str] = Counter()
    rejected: list[tuple[str, str]] = []
    workers = args.jobs or os.cpu_count() or 1
    with (
        ProcessPoolExecutor(workers, initializer=_init_worker, initargs=(settings,)) as pool,
        tqdm(total=len(files), unit="file", disable=args.quiet, file=sys.stderr) as bar,
    ):
        for name, result, detail in pool.map(_import_one, files, chunksize=16):
            counts[result] += 1
            if result == "rejected":
                rejected.append((name, detail))
            bar.update()
    for name, detail in rejected[:50]:
        print(f"rejected {name}: {detail}", file=sys.stderr)
    if len(rejected) > 50:
        print(f"... and {len(rejected) - 50} more rejected", file=sys.stderr)
    print(
        f"{counts['stored']} stored, {counts['duplicate']} duplicate, "
        f"{counts['rejected']} rejected, {len(files)} file(s) read"
    )
    return 1 if rejected or missing else 0


def _migrate(args: argparse.Namespace) -> int:
    from dicomweb_server.bootstrap import prepare

    settings = _settings(args)
    prepare(settings)
    print("index schema is up to date")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dicomweb-server", description="A DICOMweb-first medical imaging archive."
    )
    parser.add_argument("--version", action="version", version=__version__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the HTTP server")
    _common(serve)
    serve.add_argument(
        "--host", help=f"address to bind (default 127.0.0.1) [env {env_name('host')}]"
    )
    serve.add_argument("--port", type=int, help=f"port (default 8042) [env {env_name('port')}]")
    serve.add_argument(
        "--workers", type=int, help=f"HTTP worker processes (default 1) [env {env_name('workers')}]"
    )
    serve.add_argument(
        "--public-base-url",
        help="external URL of the DICOMweb root, used in RetrieveURL and BulkDataURI "
        f"[env {env_name('public_base_url')}]",
    )
    serve.add_argument(
        "--trusted-proxies",
        help="comma-separated addresses/networks whose X-Forwarded-* headers are trusted "
        f"[env {env_name('trusted_proxies')}]",
    )
    serve.add_argument(
        "--insecure",
        action="store_true",
        help="allow serving a non-loopback address without authentication "
        f"[env {env_name('insecure')}]",
    )
    serve.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    serve.add_argument("--access-log", action="store_true", help="log every request")
    _add_dimse_flags(serve)
    serve.set_defaults(func=_serve)

    imp = sub.add_parser("import", help="bulk-load DICOM files and folders")
    _common(imp)
    imp.add_argument("paths", nargs="+", type=Path, help="files or folders (searched recursively)")
    imp.add_argument("--jobs", "-j", type=int, help="parallel processes (default: CPU count)")
    imp.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    imp.set_defaults(func=_import)

    mig = sub.add_parser("migrate", help="create or upgrade the index schema")
    _common(mig)
    mig.set_defaults(func=_migrate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ValueError as exc:  # bad settings
        print(f"dicomweb-server: {exc}", file=sys.stderr)
        return 2
    except DicomWebError as exc:  # the index or the data folder cannot be used
        print(f"dicomweb-server: {exc.message}", file=sys.stderr)
        return 1
    except OSError as exc:
        where = f" {exc.filename}" if exc.filename else ""
        print(f"dicomweb-server:{where} {exc.strerror or exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
