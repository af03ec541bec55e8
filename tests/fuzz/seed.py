"""Before the fuzz run: a few real nodes, and the fuzzer's dictionaries.

Usage: seed.py OUT_DIR 'TETHER_API_READY url=... subnet=... ...'

Through the API itself (SigV4-signed, as the fuzzer's requests), creates nodes in the states
the actions care about, then writes libFuzzer-style dictionaries (one quoted value a line)
into OUT_DIR for config.toml's [dictionaries]: the emulator's real subnet, image, security
group and Elastic IP ids, instance types the emulator offers, the nodes' ids (a paused node,
a running one, a paused one with an Elastic IP, a deallocated one; and three more for DELETE
and deallocate alone), a managed instance's id, and groups' ids (one with a pool, three
without deletion protection for DELETE and deallocate). Schemathesis draws from them in positive
cases only (an entry that breaks a parameter's schema goes to negative cases), so
schema-valid requests also reach EC2 and the node records instead of stopping at "no such
subnet" or 404.

Fails (exit 1) if the API does not answer these ordinary requests as documented: then the
fuzz run would test nothing.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import requests

from sigv4 import SigV4

INSTANCE_TYPES = ["t3.micro", "t3.small", "m5.large", "c5.large"]


def main() -> int:
    out = Path(sys.argv[1])
    ready = dict(field.split("=", 1) for field in sys.argv[2].split()[1:])
    url = ready["url"]
    eips = ready["elastic_ips"].split(",")
    session = requests.Session()
    session.auth = SigV4()

    def call(method: str, path: str, body: dict | None = None, want: tuple[int, ...] = (200, 201, 202)) -> dict:
        response = session.request(method, url + path, json=body, timeout=60)
        if response.status_code not in want:
            raise SystemExit(f"seed: {method} {path} answered {response.status_code}: {response.text[:500]}")
        return response.json()

    spec = {
        "subnet_id": ready["subnet"],
        "image_id": ready["image"],
        "instance_types": INSTANCE_TYPES[:1],
        "security_group_ids": [ready["security_group"]],
    }
    paused = call("POST", "/nodes", {"spec": spec})
    running = call("POST", "/nodes", {"spec": spec, "resume": True})
    with_eip = call("POST", "/nodes", {"spec": spec, "persistence": {"elastic_ip_allocation_id": eips[1]}, "resume": True})
    call("POST", f"/nodes/{with_eip['id']}/pause")
    gone = call("POST", "/nodes", {"spec": spec, "resume": True})
    call("POST", f"/nodes/{gone['id']}/deallocate")
    # For DELETE and deallocate, which end a node: their own, so the others stay alive.
    doomed = [call("POST", "/nodes", {"spec": spec, "resume": resume})["id"] for resume in (False, True, True)]
    # Groups: one with a pool (its members are real nodes too), and groups of their own for
    # DELETE and deallocate (deletion protection off).
    template = {k: v for k, v in spec.items() if k != "subnet_id"}
    group = call("POST", "/groups", {"name": "fuzz", "subnet_ids": [ready["subnet"]], "template": template, "target_capacity": 1, "private_ip_pool": ["10.0.1.200", "10.0.1.201"]})
    doomed_groups = [
        call("POST", "/groups", {"name": f"fuzz-doomed-{n}", "subnet_ids": [ready["subnet"]], "template": template, "target_capacity": 0, "deletion_protection": False})["id"]
        for n in range(3)
    ]
    running = call("GET", f"/nodes/{running['id']}")
    if running["state"] != "running" or not running.get("instance_id"):
        raise SystemExit(f"seed: node {running['id']} is {running['state']} after create with resume: {json.dumps(running)}")

    dictionaries = {
        "subnets": [ready["subnet"]],
        "images": [ready["image"]],
        "security_groups": [ready["security_group"]],
        "elastic_ips": eips,
        "instance_types": INSTANCE_TYPES,
        "nodes": [paused["id"], running["id"], with_eip["id"], gone["id"]],
        "doomed_nodes": doomed,
        "instances": [running["instance_id"]],
        "groups": [group["id"]],
        "doomed_groups": doomed_groups,
    }
    out.mkdir(parents=True, exist_ok=True)
    for name, values in dictionaries.items():
        lines = ['"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"' for v in values]
        (out / f"{name}.dict").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"seed: nodes paused={paused['id']} running={running['id']} paused_with_eip={with_eip['id']} deallocated={gone['id']} for_deallocation={','.join(doomed)}")
    print(f"seed: groups {group['id']} for_deallocation={','.join(doomed_groups)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
