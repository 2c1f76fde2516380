"""python -m lab up|down|status|stop HOST|start HOST|apply [FILE]|send|read|client: the lab cluster here.

Run it as root with the project's venv (`.venv/bin/python -m lab ...`): Debian's python3 has none of
the packages the lab imports. Every command acts on the lab of the MAIL_LAB_ID in its environment.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lab import LAB_ID, apply, cluster, first_mail, hosts


def _daemon(d: dict) -> str:
    """`postfix:25,465` (the TCP ports it listens on), `(dead)` when it does not run."""
    ports = ",".join(str(p) for p in d.get("tcp", []))
    return f"{d['name']}{':' + ports if ports else ''}{'' if d['alive'] else '(dead)'}"


def _print_status(status: dict) -> None:
    if not status.get("hosts"):
        print("the lab is not up")
        return
    health = "up" if status["up"] else "NOT healthy"
    print(f"stack {status['stack']}: {health}; clients run in {status['client_netns']} (ip netns exec ...)")
    for h in status["hosts"]:
        daemons = " ".join(_daemon(d) for d in h["daemons"]) or "-"
        print(f"  {h['name']:<18} {h['role']:<13} {h['netns']:<24} {' '.join(h['addresses'])}")
        print(f"  {'':<18} {daemons}")
    e = status["endpoints"]
    for name in ("submission", "imaps", "managesieve", "webmail", "webmail_http", "mta_sts", "dns", "remote_mta"):
        kind = "TLS name" if e[name].get("tls", True) else "plain HTTP, name"
        tls = f" ({kind} {e[name]['name']})" if "name" in e[name] else ""
        print(f"  {name:<12} {e[name]['host']} port {e[name]['port']}{tls}")
    for name in ("mx", "smtps"):
        print(f"  {name:<12} " + ", ".join(f"[{m['host']}]:{m['port']}" for m in e[name]))
    for a in status["accounts"]:
        print(f"  account {a['address']} user {a['user']} password {a['password']}")
    print(f"  CA {status['ca_file']}; logs in {status['hosts'][0]['logs'].rsplit('/', 2)[0]}/<host>/log")


def _again(command: str) -> str:
    """The command line for `command` on this same lab (its MAIL_LAB_ID)."""
    lab_id = f"MAIL_LAB_ID={LAB_ID} " if LAB_ID else ""
    return f"{lab_id}.venv/bin/python -m lab {command}"


def _apply(stack_file: Path | None) -> int:
    try:
        outcomes = apply.apply(stack_file)
    except apply.ApplyRefused as err:
        print(f"lab apply refused: {err}", file=sys.stderr)
        return 1
    failed = [o for o in outcomes if o.status == "failed"]
    pushed = sum(o.status == "pushed" for o in outcomes)
    print(f"pushed {pushed} hosts, {len(failed)} failed, {sum(o.status == 'unchanged' for o in outcomes)} unchanged")
    for o in failed:
        print(f"lab apply failed on {o.error}", file=sys.stderr)
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=".venv/bin/python -m lab", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="render, build and start the lab; wait until every daemon listens")
    up.add_argument(
        "--stack",
        default="lab",
        help="stack name (Pulumi.<stack>.yaml here) or a stack file's path; documentation addresses only",
    )
    up.add_argument("--only", help="comma-separated hosts to render and run (the network is always whole)")
    up.add_argument("--timeout", type=float, default=180, help="seconds to wait for readiness")
    sub.add_parser("down", help="stop every lab process, remove every namespace, mount and file")
    st = sub.add_parser("status", help="hosts, endpoints and accounts of the running lab")
    st.add_argument("--json", action="store_true")
    for verb, text in (("stop", "stop every daemon of one host (try a failover)"), ("start", "start them again")):
        sub.add_parser(verb, help=text).add_argument("host", help="a host of the running lab, e.g. maildrop0-chbtl0")
    ap = sub.add_parser("apply", help="push the hosts whose trees changed, one at a time per role, with probes")
    ap.add_argument("file", nargs="?", type=Path, help="the stack file as edited (default: the running lab's)")
    send = sub.add_parser("send", help="submit a message as a lab account through a frontend (587)")
    send.add_argument("sender", help="an account of the lab: alice or alice@example.com")
    send.add_argument("recipient", help="any address, e.g. bob@example.com")
    send.add_argument("--subject", default=first_mail.DEFAULT_SUBJECT)
    read = sub.add_parser("read", help="an account's newest messages through a frontend (993)")
    read.add_argument("account", help="an account of the lab: bob or bob@example.com")
    read.add_argument("--subject", help="first wait (up to 30 s) for a message with this in its subject")
    client = sub.add_parser("client", help="run a command in the lab's internet namespace (e.g. swaks)")
    client.add_argument("argv", nargs=argparse.REMAINDER, help="the command and its arguments")
    args = parser.parse_args(argv)

    if args.command in ("send", "read", "client"):
        return _mail(args)

    if args.command == "up":
        try:
            status = cluster.up(args.stack, args.only.split(",") if args.only else None, timeout=args.timeout)
        except (RuntimeError, TimeoutError, ValueError) as err:
            print(f"lab up failed: {err}", file=sys.stderr)
            print(
                f"the lab is left as it is for inspection; `{_again('down')}` removes it",
                file=sys.stderr,
            )
            return 1
        _print_status(status)
    elif args.command == "apply":
        return _apply(args.file)
    elif args.command == "down":
        cluster.down()
    elif args.command in ("stop", "start"):
        try:
            done = hosts.stop(args.host) if args.command == "stop" else list(hosts.start(args.host))
        except hosts.UnknownHost as e:
            print(e.args[0], file=sys.stderr)
            return 1
        verb = {"stop": "stopped", "start": "started"}[args.command]
        print(f"{args.host}: {verb} {' '.join(done) or 'nothing (already so)'}")
    else:
        status = cluster.status()
        if args.json:
            print(json.dumps(status, indent=2))
        else:
            _print_status(status)
    return 0


def _mail(args: argparse.Namespace) -> int:
    status = cluster.status()
    # A host stopped on purpose (a failover) leaves the lab not healthy, but still there to use.
    if not status["hosts"]:
        print(f"the lab is not up (MAIL_LAB_ID={LAB_ID or '(none)'}): `{_again('up')}` first", file=sys.stderr)
        return 1
    try:
        if args.command == "send":
            print(first_mail.send(status, args.sender, args.recipient, args.subject))
        elif args.command == "read":
            print("\n".join(first_mail.read(status, args.account, args.subject)))
        else:
            first_mail.client(status, args.argv)
    except (first_mail.NoSuchAccount, TimeoutError) as e:
        print(e.args[0], file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
