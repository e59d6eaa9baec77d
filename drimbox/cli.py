"""The `drimbox` command.

Every command prints one clear line on error and exits non-zero (1 for a drimbox error, 2 for
bad usage, 130 on Ctrl-C); tracebacks are for bugs only.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Sequence
from datetime import date, datetime, timedelta
from pathlib import Path

from drimbox import __version__
from drimbox.config import Settings, load_settings
from drimbox.errors import DrimboxError
from drimbox.logs import configure_logging


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args))
    except DrimboxError as exc:
        print(f"drimbox: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("drimbox: interrupted", file=sys.stderr)
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="drimbox", description="A DRIM-M node for a radiology site.")
    parser.add_argument("--version", action="version", version=f"drimbox {__version__}")
    parser.add_argument("--config", type=Path, help="configuration file (default: config/drimbox.toml)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the daemon (DICOM listener, HTTP, periodic indexing)")
    serve.set_defaults(run=cmd_serve)

    demo = sub.add_parser("demo", help="run a self-contained demo: demo PACS loaded with sample_dicom/")
    demo.add_argument("--data", type=Path, default=Path("demo-data"), help="demo data folder (default demo-data)")
    demo.add_argument("--samples", type=Path, default=Path("sample_dicom"), help="DICOM files to load")
    demo.add_argument("--http-port", type=int, default=8080)
    demo.add_argument("--no-wait", action="store_true", help="index once and exit (for checks)")
    demo.set_defaults(run=cmd_demo)

    echo = sub.add_parser("echo", help="C-ECHO a PACS peer")
    echo.add_argument("peer", help="peer name, as in [pacs.<name>]")
    echo.set_defaults(run=cmd_echo)

    index = sub.add_parser("index", help="index the PACS by C-FIND (incremental)")
    index.add_argument("--since", type=_date, help="first study date, YYYY-MM-DD (default: the window)")
    index.add_argument("--until", type=_date, help="last study date, YYYY-MM-DD")
    index.add_argument("--all", action="store_true", help="every date, descending into every study")
    index.add_argument("--peer", help="only this peer (default: all)")
    index.add_argument("--quiet", action="store_true", help="no progress bar")
    index.set_defaults(run=cmd_index)

    retrieve = sub.add_parser("retrieve", help="bring a study (or series) into our store")
    retrieve.add_argument("study_uid")
    retrieve.add_argument("--series", help="only this SeriesInstanceUID")
    retrieve.add_argument("--peer", help="peer to retrieve from (default: where the index found it)")
    retrieve.add_argument("--quiet", action="store_true", help="no progress bar")
    retrieve.set_defaults(run=cmd_retrieve)

    status = sub.add_parser("status", help="index counts and peer reachability")
    status.add_argument("--json", action="store_true")
    status.set_defaults(run=cmd_status)

    pubs = sub.add_parser("publications", help="publications to the DMP: state and history")
    pubs.add_argument("id", nargs="?", type=int, help="one publication, with its whole history")
    pubs.add_argument("--state", help="only this state (pending, waiting, ready, sending, published, refused, ...)")
    pubs.add_argument("--study", help="only this StudyInstanceUID")
    pubs.add_argument("--limit", type=int, default=50)
    pubs.add_argument("--json", action="store_true", help="machine-readable output")
    pubs.add_argument("--refused", action="store_true", help="the report messages refused (AE/AR) and why")
    pubs.set_defaults(run=cmd_publications)

    audit = sub.add_parser("audit", help="the audit trail: who accessed which patient's data, and refusals")
    audit.add_argument("action_name", nargs="?", choices=["verify"], help="verify: check the hash chain")
    audit.add_argument("--patient", default="", help="only this patient (INS, or IPP)")
    audit.add_argument("--study", default="", help="only this StudyInstanceUID")
    audit.add_argument("--action", default="", help="only this action, or a prefix ending in '.' (e.g. dicomweb.)")
    audit.add_argument("--failures", action="store_true", help="only refusals and failures")
    audit.add_argument("--since", type=_moment, help="from this date or time (YYYY-MM-DD[THH:MM], or 'today')")
    audit.add_argument("--until", type=_moment, help="before this date or time")
    audit.add_argument("--limit", type=int, default=100)
    audit.add_argument("--json", action="store_true", help="one JSON object per line")
    audit.set_defaults(run=cmd_audit)

    whitelist = sub.add_parser("whitelist", help="the ANS whitelist of DRIM-M boxes in force")
    whitelist.add_argument("whitelist_command", choices=["status", "refresh"], metavar="status|refresh")
    whitelist.add_argument("--json", action="store_true")
    whitelist.set_defaults(run=cmd_whitelist)

    stats = sub.add_parser("stats", help="the ANS statistics export (ModelStat CSV) from the audit trail")
    stats.add_argument("--since", type=_moment, help="first day (default: yesterday)")
    stats.add_argument("--until", type=_moment, help="end, excluded (default: today 00:00)")
    stats.add_argument("--output", type=Path, help="write the CSV here (default: standard output)")
    stats.set_defaults(run=cmd_stats)

    sandbox = sub.add_parser("sandbox", help="local stand-ins of the national services (tests, demo)")
    sandbox_sub = sandbox.add_subparsers(dest="sandbox_command", required=True, metavar="ACTION")
    pki = sandbox_sub.add_parser("pki", help="create a test PKI (IGC-Santé stand-in, ORG certificates, PKCS#12)")
    pki.add_argument("folder", type=Path, help="where to write the CA, certificates, keys and CRLs")
    pki.add_argument("--structure-id", required=True, help="structure id written as OU of the ORG certificates")
    pki.add_argument("--host", action="append", default=[], help="server certificate host (repeatable)")
    pki.add_argument("--force", action="store_true", help="replace an existing PKI in the folder")
    pki.set_defaults(run=cmd_sandbox_pki)

    dbp = sub.add_parser("db", help="index database maintenance")
    dbsub = dbp.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    upgrade = dbsub.add_parser("upgrade", help="apply schema migrations")
    upgrade.set_defaults(run=cmd_db_upgrade)
    current = dbsub.add_parser("current", help="show the schema revision")
    current.set_defaults(run=cmd_db_current)
    return parser


def _date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date (YYYY-MM-DD)") from None


def _moment(text: str) -> datetime:
    """A date or date-time for --since/--until, in local time unless it names its zone."""
    if text == "today":
        return datetime.combine(date.today(), datetime.min.time()).astimezone()
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date or time (YYYY-MM-DD[THH:MM])") from None
    return moment if moment.tzinfo is not None else moment.astimezone()


def _settings(args: argparse.Namespace) -> Settings:
    settings = load_settings(args.config)
    configure_logging(settings.log_level)
    return settings


def cmd_serve(args: argparse.Namespace) -> int:
    from drimbox.daemon import Daemon

    settings = _settings(args)
    # uvicorn re-raises the SIGINT it handled once it has shut down cleanly
    with contextlib.suppress(KeyboardInterrupt):
        Daemon(settings).run()
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from drimbox.sandbox.demo import run_demo

    return run_demo(args.data, args.samples, args.http_port, wait=not args.no_wait)


def cmd_echo(args: argparse.Namespace) -> int:
    from drimbox.daemon import build_node

    node = build_node(_settings(args))
    health = node.echo(args.peer)
    peer = node.settings.peer(args.peer)
    if not health.reachable:
        raise DrimboxError(f"C-ECHO {args.peer} failed: {health.detail}")
    print(f"{args.peer} ({peer.ae_title}@{peer.host}:{peer.port}): C-ECHO ok in {health.latency_ms} ms")
    return 0


def cmd_index(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from drimbox.daemon import build_node

    node = build_node(_settings(args))
    peers = [args.peer] if args.peer else list(node.settings.pacs)
    if not peers:
        raise DrimboxError("no PACS peer configured; add a [pacs.<name>] section")
    for peer in peers:
        bar = None if args.quiet else tqdm(desc=f"indexing {peer}", unit="study", file=sys.stderr)

        def progress(done: int, total: int, bar: tqdm | None = bar) -> None:
            if bar is not None:
                bar.total = total
                bar.n = done
                bar.refresh()

        try:
            report = node.index_peer(peer, args.since, args.until, full=args.all, progress=progress)
        finally:
            if bar is not None:
                bar.close()
        print(
            f"{peer}: {report.studies_seen} studies seen — {report.studies_new} new, "
            f"{report.studies_changed} changed, {report.studies_unchanged} unchanged, "
            f"{report.studies_removed} removed; {report.instances_seen} instances listed; "
            f"C-FIND requests {dict(report.stats.requests)}"
            + (f"; {report.invalid_answers} invalid answers ignored" if report.invalid_answers else "")
            + (f"; {report.stats.truncated} truncated answers" if report.stats.truncated else "")
        )
    return 0


def cmd_retrieve(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from drimbox.daemon import build_node, settle

    node = build_node(_settings(args))
    settle()
    node.store.clean_incoming(older_than=node.settings.dimse.idle_timeout * 2)
    peer = args.peer or node.retriever.peer_for(args.study_uid)
    if node.settings.peer(peer).retrieve == "c-move":
        try:
            node.scp.start()
        except OSError as exc:
            raise DrimboxError(
                f"cannot listen on {node.settings.dimse.bind}:{node.settings.dimse.port} to receive the "
                f"C-MOVE ({exc.strerror}); is `drimbox serve` running?"
            ) from None
    known = sum(len(uids) for uids in node.index.instances_by_series(args.study_uid, args.series).values())
    bar = None if args.quiet else tqdm(total=known or None, desc="retrieving", unit="inst", file=sys.stderr)

    def progress(admitted: object) -> None:
        if bar is not None:
            bar.update(1)

    try:
        report = node.retriever.retrieve(args.study_uid, args.series, peer=peer, on_instance=progress)
    finally:
        if bar is not None:
            bar.close()
        node.close()
    rate = report.bytes / 1e6 / report.seconds if report.seconds else 0.0
    print(
        f"{report.stored} instances stored ({report.bytes / 1e6:.1f} MB in {report.seconds:.1f} s, "
        f"{rate:.1f} MB/s) by {report.method.upper()} from {peer}"
        + (f"; {report.failed} failed" if report.failed else "")
    )
    return 1 if report.failed else 0


def cmd_status(args: argparse.Namespace) -> int:
    from drimbox.daemon import build_node

    node = build_node(_settings(args))
    for peer in node.settings.pacs:
        node.echo(peer)
    state = node.snapshot()
    if args.json:
        print(json.dumps(state, indent=2))
        return 0
    print(f"drimbox {state['version']} — {state['site']} ({state['mode']}), AE {state['ae_title']}")
    for peer in state["peers"]:
        mark = "ok" if peer["reachable"] else "UNREACHABLE"
        print(f"  peer {peer['name']}: {peer['ae_title']}@{peer['host']}:{peer['port']} {mark} {peer['detail']}")
    counts = state["index"]
    print(
        f"  index: {counts['patients']} patients, {counts['studies']} studies, {counts['series']} series, "
        f"{counts['instances']} instances; held {counts['instances_held']} ({counts['bytes_held'] / 1e6:.1f} MB)"
    )
    return 0


def cmd_publications(args: argparse.Namespace) -> int:
    from drimbox.index import db
    from drimbox.publish.outbox import Outbox

    settings = _settings(args)
    outbox = Outbox(db.make_engine(settings.database_url))
    if args.refused:
        for m in outbox.messages(limit=args.limit, refused_only=True):
            when = f"{m.received_at:%Y-%m-%d %H:%M:%S}"
            print(f"  {when}  {m.outcome}  {m.control_id or '-':<20} {m.message_type or '?':<18} {m.outcome_text}")
        return 0
    if args.id is not None:
        if not 0 < args.id < 2**63:
            raise DrimboxError(f"no publication {args.id}")
        try:
            item = outbox.load(args.id, history=True).summary()
        except KeyError:
            raise DrimboxError(f"no publication {args.id}") from None
        if args.json:
            print(json.dumps(item, indent=2))
            return 0
        print(f"publication {item['id']}: {item['action']} of study {item['study_uid']} — {item['state']}")
        if item["reason"]:
            print(f"  reason: {item['reason']}")
        print(f"  KOS {item['kos_sop_uid']}, attempts {item['attempts']}, entry {item['entry_uuid'] or '-'}")
        for issue in item["dmp_issues"]:
            print(f"  DMP error {issue['code']}: {issue['context']}")
        for event in item["history"]:
            print(f"  {event['at']}  {event['state']:<10} {event['detail']}")
        return 0
    items = [p.summary() for p in outbox.list(state=args.state, study_uid=args.study, limit=args.limit)]
    if args.json:
        print(json.dumps({"counts": outbox.counts(), "publications": items}, indent=2))
        return 0
    counts = ", ".join(f"{k} {v}" for k, v in sorted(outbox.counts().items())) or "none"
    print(f"publications: {counts}")
    for item in items:
        print(f"  {item['id']:>6}  {item['updated_at']}  {item['action']:<8} {item['state']:<10} "
              f"{item['study_uid']}  {item['reason']}")  # fmt: skip
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    """List audit records, or verify the chain (exit 1 and the first broken record if tampered)."""
    from drimbox.audit.trail import ChainedAuditTrail, format_records
    from drimbox.index import db

    settings = _settings(args)
    trail = ChainedAuditTrail(db.make_engine(settings.database_url))
    if args.action_name == "verify":
        report = trail.check()
        print(f"audit trail intact: {report.checked} records, chain head {report.head_seq}")
        return 0
    if not 1 <= args.limit <= 100_000:
        raise DrimboxError("--limit must be between 1 and 100000")
    records = trail.query(patient_id=args.patient, study_uid=args.study, action=args.action,
                          outcome="failure" if args.failures else "", since=args.since, until=args.until,
                          limit=args.limit, newest_first=False)  # fmt: skip
    if args.json:
        for record in records:
            print(json.dumps(record.as_dict(), ensure_ascii=False))
        return 0
    for line in format_records(records):
        print(line)
    if not records:
        print("no audit record matches", file=sys.stderr)
    return 0


def cmd_whitelist(args: argparse.Namespace) -> int:
    """Show the list in force, or download and verify it now (exit 1 when refused or unreachable)."""
    from drimbox.audit.trail import ChainedAuditTrail
    from drimbox.index import db
    from drimbox.whitelist.keeper import WhitelistKeeper
    from drimbox.whitelist.report import format_status

    settings = _settings(args)
    engine = db.make_engine(settings.database_url)
    if settings.database.auto_upgrade:
        db.upgrade(engine)
    keeper = WhitelistKeeper(settings.whitelist, settings.store.folder / "whitelist", ChainedAuditTrail(engine))
    keeper.load()
    failed = False
    if args.whitelist_command == "refresh":
        if not settings.whitelist.url:
            raise DrimboxError("[whitelist] url is not set: nothing to download")
        result = keeper.refresh()
        failed = result.outcome in ("refused", "download_failed")
        if not args.json:
            print(f"{result.outcome}: {result.reason}" if result.reason else result.outcome)
    status = keeper.status()
    print(json.dumps(status, indent=2, default=str) if args.json else format_status(status))
    return 1 if failed else 0


def cmd_stats(args: argparse.Namespace) -> int:
    from drimbox.audit.statistics import model_stat_csv, model_stat_rows, walk
    from drimbox.audit.trail import ChainedAuditTrail
    from drimbox.index import db

    settings = _settings(args)
    until = args.until or _moment("today")
    since = args.since or until - timedelta(days=1)
    if since >= until:
        raise DrimboxError("--since must be before --until")
    trail = ChainedAuditTrail(db.make_engine(settings.database_url))
    rows = model_stat_rows(walk(trail, since, until), settings.site.structure_id)
    try:
        text = model_stat_csv(rows, settings.statistics.columns)
    except ValueError as exc:
        raise DrimboxError(f"[statistics] columns: {exc}") from None
    if args.output is None:
        sys.stdout.write(text)
    else:
        args.output.write_text(text, encoding="utf-8")
        print(f"{len(rows)} rows written to {args.output}")
    return 0


def cmd_sandbox_pki(args: argparse.Namespace) -> int:
    from drimbox.sandbox.pki import create_pki

    hosts = tuple(args.host) or ("localhost", "127.0.0.1")
    files = create_pki(args.folder, args.structure_id, hosts=hosts, force=args.force)
    print(f"test PKI in {args.folder}:")
    for name, value in vars(files).items():
        print(f"  {name}: {value}")
    return 0


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    from drimbox.index import db

    settings = _settings(args)
    engine = db.make_engine(settings.database_url)
    db.upgrade(engine)
    print(f"index database at revision {db.current_revision(engine)}")
    return 0


def cmd_db_current(args: argparse.Namespace) -> int:
    from drimbox.index import db

    settings = _settings(args)
    engine = db.make_engine(settings.database_url)
    print(f"current {db.current_revision(engine) or '(empty)'}, newest {db.head_revision()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
