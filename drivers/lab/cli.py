"""``vmmgr-lab up N | down | status``: the multi-host libvirt lab from the shell."""

from __future__ import annotations

import argparse
import json
import sys

from drivers.lab.lab import DEFAULT_BASE_DIR, DEFAULT_PREFIX, DEFAULT_SUBNET, Lab, cleanup
from vmmgr.errors import VmmgrError


def _print_status(lab: Lab, as_json: bool) -> None:
    rows = lab.status()
    if as_json:
        print(json.dumps({"shared_dir": lab.shared_dir, "hosts": rows}, indent=2))
        return
    for r in rows:
        state = "up" if r["running"] else "DOWN"
        print(f"{r['name']}\t{state}\t{r['uri']}\t{r['unix_uri']}")
    print(f"shared pool: {lab.shared_dir}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="vmmgr-lab", description="several libvirt hosts in network namespaces"
    )
    ap.add_argument("--base-dir", default=DEFAULT_BASE_DIR)
    ap.add_argument("--prefix", default=DEFAULT_PREFIX, help="names of netns/links (cleanup key)")
    sub = ap.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="create N hosts (tears down a previous lab first)")
    up.add_argument("n", type=int)
    up.add_argument("--subnet", default=DEFAULT_SUBNET)
    sub.add_parser("down", help="kill and remove everything named <prefix>-*")
    st = sub.add_parser("status", help="print each host's URIs")
    st.add_argument("--json", action="store_true")
    kill = sub.add_parser("kill", help="SIGKILL one host's daemons and guests")
    kill.add_argument("index", type=int)
    start = sub.add_parser("start", help="(re)start one host's daemons")
    start.add_argument("index", type=int)
    a = ap.parse_args(argv)
    try:
        if a.cmd == "up":
            lab = Lab(a.n, a.base_dir, a.subnet, a.prefix).up()
            _print_status(lab, False)
        elif a.cmd == "down":
            for what in cleanup(a.prefix, a.base_dir):
                print(f"removed {what}")
        elif a.cmd == "status":
            _print_status(Lab.load(a.base_dir), a.json)
        elif a.cmd == "kill":
            Lab.load(a.base_dir).kill_host(a.index)
        elif a.cmd == "start":
            Lab.load(a.base_dir).start_host(a.index)
    except VmmgrError as e:
        print(f"vmmgr-lab: {e}", file=sys.stderr)
        return 1
    except IndexError:
        print("vmmgr-lab: no such host", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
