#!/usr/bin/env python3
"""Prove that each tether_moto.py patch enforces its AWS rule.

Usage:
    .venv/bin/python tests/emulator/check_rules.py            # full matrix
    .venv/bin/python tests/emulator/check_rules.py --once     # all patches only

Starts the launcher (as the Rust tests do: stdin piped, --port 0), drives it
with boto3 and prints PASS/FAIL per rule. The full matrix then restarts it once
per patch with TETHER_MOTO_DISABLE=<patch> and shows that exactly that rule
fails (the other rules still pass). It also checks the launcher's own
contract: the ready line, exit on stdin EOF and on SIGTERM, DynamoDB served.
Exit status 0 when everything behaved as expected.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

LAUNCHER = Path(__file__).with_name("tether_moto.py")
PATCH_NAMES = ("eni-release", "eni-in-use", "private-ip", "client-token", "eni-az")
REGION = "us-east-1"

os.environ.update(
    AWS_ACCESS_KEY_ID="testing",
    AWS_SECRET_ACCESS_KEY="testing",
    AWS_SESSION_TOKEN="testing",
    AWS_DEFAULT_REGION=REGION,
)


class Emulator:
    """The launcher as a child process, the way the Rust tests run it."""

    def __init__(self, disable: str = ""):
        env = dict(os.environ, TETHER_MOTO_DISABLE=disable)
        self.proc = subprocess.Popen(
            [sys.executable, str(LAUNCHER), "--port", "0"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
            text=True,
        )
        line = self.proc.stdout.readline().strip()
        if not line.startswith("TETHER_MOTO_READY port="):
            raise RuntimeError(f"launcher did not become ready: {line!r}")
        self.ready_line = line
        self.port = int(line.split("=", 1)[1])
        self.endpoint = f"http://127.0.0.1:{self.port}"

    def client(self, service: str) -> Any:
        return boto3.client(
            service,
            endpoint_url=self.endpoint,
            region_name=REGION,
            config=Config(retries={"max_attempts": 1}),
        )

    def close(self) -> int | None:
        self.proc.stdin.close()  # EOF: the launcher must exit by itself
        try:
            return self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return None


# ---- small helpers ---------------------------------------------------------


class Checks:
    """Collects (description, ok, detail) for one rule."""

    def __init__(self) -> None:
        self.results: list[tuple[str, bool, str]] = []

    def ok(self, description: str, condition: bool, detail: Any = "") -> bool:
        self.results.append((description, bool(condition), "" if condition else str(detail)))
        return bool(condition)

    def error(
        self, description: str, call: Callable[[], Any], code: str, message: str | None = None
    ) -> None:
        """`call` must fail with HTTP 400 and this AWS error code (and message)."""
        try:
            call()
        except ClientError as e:
            got_code = e.response["Error"]["Code"]
            got_message = e.response["Error"].get("Message", "")
            status = e.response["ResponseMetadata"]["HTTPStatusCode"]
            good = got_code == code and status == 400 and (message is None or got_message == message)
            self.ok(description, good, f"got HTTP {status} {got_code}: {got_message}")
            return
        self.ok(description, False, "call succeeded")

    @property
    def passed(self) -> bool:
        return all(ok for _, ok, _ in self.results)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def image_id(ec2: Any) -> str:
    return ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]


def network(ec2: Any, second_octet: int) -> dict[str, str]:
    """A VPC 10.<n>.0.0/16 with subnets a=.1.0/24 (us-east-1a), b=.2.0/24 (us-east-1b)."""
    vpc = ec2.create_vpc(CidrBlock=f"10.{second_octet}.0.0/16")["Vpc"]["VpcId"]

    def subnet(third: int, zone: str, mask: int = 24) -> str:
        return ec2.create_subnet(
            VpcId=vpc, CidrBlock=f"10.{second_octet}.{third}.0/{mask}", AvailabilityZone=zone
        )["Subnet"]["SubnetId"]

    return {"vpc": vpc, "a": subnet(1, "us-east-1a"), "b": subnet(2, "us-east-1b"), "subnet": subnet}


def launch(ec2: Any, **kwargs: Any) -> dict[str, Any]:
    kwargs.setdefault("ImageId", image_id(ec2))
    kwargs.setdefault("InstanceType", "t3.micro")
    return ec2.run_instances(MinCount=1, MaxCount=1, **kwargs)


def on_eni(eni_id: str) -> list[dict[str, Any]]:
    return [{"DeviceIndex": 0, "NetworkInterfaceId": eni_id}]


def describe_instance(ec2: Any, instance_id: str) -> dict[str, Any]:
    return ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]


def instance_count(ec2: Any) -> tuple[int, int]:
    reservations = ec2.describe_instances()["Reservations"]
    return len(reservations), sum(len(r["Instances"]) for r in reservations)


def eni_or_none(ec2: Any, eni_id: str) -> dict[str, Any] | None:
    try:
        return ec2.describe_network_interfaces(NetworkInterfaceIds=[eni_id])["NetworkInterfaces"][0]
    except ClientError as e:
        if e.response["Error"]["Code"] == "InvalidNetworkInterfaceID.NotFound":
            return None
        raise


def new_eni(ec2: Any, subnet: str, **kwargs: Any) -> dict[str, Any]:
    return ec2.create_network_interface(SubnetId=subnet, **kwargs)["NetworkInterface"]


def eip_on(ec2: Any, eni_id: str) -> dict[str, Any]:
    allocation = ec2.allocate_address(Domain="vpc")
    ec2.associate_address(AllocationId=allocation["AllocationId"], NetworkInterfaceId=eni_id)
    return allocation


# ---- rules ------------------------------------------------------------------


def check_eni_release(ec2: Any, c: Checks) -> None:
    net = network(ec2, 11)
    eni = new_eni(ec2, net["a"])
    eip = eip_on(ec2, eni["NetworkInterfaceId"])
    first = launch(ec2, NetworkInterfaces=on_eni(eni["NetworkInterfaceId"]))["Instances"][0]
    ec2.terminate_instances(InstanceIds=[first["InstanceId"]])

    after = eni_or_none(ec2, eni["NetworkInterfaceId"])
    c.ok("DeleteOnTermination=false ENI survives termination", after is not None)
    if after:
        c.ok("... and is 'available'", after["Status"] == "available", after["Status"])
        c.ok("... with no attachment", "Attachment" not in after, after.get("Attachment"))
    address = ec2.describe_addresses(AllocationIds=[eip["AllocationId"]])["Addresses"][0]
    c.ok(
        "its EIP stays on the ENI (NetworkInterfaceId, PrivateIpAddress)",
        address.get("NetworkInterfaceId") == eni["NetworkInterfaceId"]
        and address.get("PrivateIpAddress") == eni["PrivateIpAddress"],
        address,
    )
    c.ok("the EIP shows no InstanceId after termination", not address.get("InstanceId"), address)
    terminated = describe_instance(ec2, first["InstanceId"])
    c.ok(
        "terminated instance lists no network interfaces",
        terminated["State"]["Name"] == "terminated" and not terminated.get("NetworkInterfaces"),
        terminated.get("NetworkInterfaces"),
    )
    try:
        ec2.terminate_instances(InstanceIds=[first["InstanceId"]])
        c.ok("terminating a terminated instance again is a no-op", True)
    except ClientError as e:
        c.ok("terminating a terminated instance again is a no-op", False, e)

    try:
        second = launch(ec2, NetworkInterfaces=on_eni(eni["NetworkInterfaceId"]))["Instances"][0]
        described = describe_instance(ec2, second["InstanceId"])
        c.ok(
            "the released ENI can boot a new instance, which gets its EIP",
            described.get("PublicIpAddress") == eip["PublicIp"],
            described.get("PublicIpAddress"),
        )
        address = ec2.describe_addresses(AllocationIds=[eip["AllocationId"]])["Addresses"][0]
        c.ok("DescribeAddresses shows the new InstanceId", address.get("InstanceId") == second["InstanceId"], address)
    except ClientError as e:
        c.ok("the released ENI can boot a new instance", False, e)

    created = launch(ec2, SubnetId=net["a"])["Instances"][0]
    created_eni = created["NetworkInterfaces"][0]
    c.ok(
        "an ENI created by RunInstances defaults to DeleteOnTermination=true",
        created_eni["Attachment"]["DeleteOnTermination"] is True,
        created_eni["Attachment"],
    )
    ec2.terminate_instances(InstanceIds=[created["InstanceId"]])
    c.ok(
        "DeleteOnTermination=true ENI is deleted on termination",
        eni_or_none(ec2, created_eni["NetworkInterfaceId"]) is None,
    )

    kept = launch(ec2, SubnetId=net["a"])["Instances"][0]
    kept_eni = kept["NetworkInterfaces"][0]
    try:
        ec2.modify_network_interface_attribute(
            NetworkInterfaceId=kept_eni["NetworkInterfaceId"],
            Attachment={"AttachmentId": kept_eni["Attachment"]["AttachmentId"], "DeleteOnTermination": False},
        )
        flag = eni_or_none(ec2, kept_eni["NetworkInterfaceId"])["Attachment"]["DeleteOnTermination"]
        c.ok("ModifyNetworkInterfaceAttribute sets Attachment.DeleteOnTermination", flag is False, flag)
    except ClientError as e:
        c.ok("ModifyNetworkInterfaceAttribute sets Attachment.DeleteOnTermination", False, e)
    ec2.terminate_instances(InstanceIds=[kept["InstanceId"]])
    survivor = eni_or_none(ec2, kept_eni["NetworkInterfaceId"])
    c.ok(
        "... after which the ENI survives termination, available",
        survivor is not None and survivor["Status"] == "available",
        survivor and survivor["Status"],
    )


def check_eni_in_use(ec2: Any, c: Checks) -> None:
    net = network(ec2, 12)
    eni = new_eni(ec2, net["b"])  # us-east-1b: not moto's default <region>a
    eni_id = eni["NetworkInterfaceId"]
    eip = eip_on(ec2, eni_id)
    first = launch(
        ec2, NetworkInterfaces=on_eni(eni_id), InstanceMarketOptions={"MarketType": "spot"}
    )["Instances"][0]
    d = describe_instance(ec2, first["InstanceId"])
    nic = (d.get("NetworkInterfaces") or [{}])[0]
    c.ok("instance boots on the ENI at DeviceIndex 0",
         nic.get("NetworkInterfaceId") == eni_id and nic.get("Attachment", {}).get("DeviceIndex") == 0, nic)
    c.ok("PrivateIpAddress comes from the ENI", d.get("PrivateIpAddress") == eni["PrivateIpAddress"], d.get("PrivateIpAddress"))
    c.ok("SubnetId/VpcId come from the ENI", d.get("SubnetId") == net["b"] and d.get("VpcId") == net["vpc"],
         (d.get("SubnetId"), d.get("VpcId")))
    c.ok("Placement AZ comes from the ENI", d["Placement"]["AvailabilityZone"] == "us-east-1b", d["Placement"])
    c.ok("PublicIpAddress is the ENI's EIP", d.get("PublicIpAddress") == eip["PublicIp"], d.get("PublicIpAddress"))
    c.ok("NetworkInterfaces[0].Association.PublicIp is the EIP",
         nic.get("Association", {}).get("PublicIp") == eip["PublicIp"], nic.get("Association"))
    c.ok("InstanceMarketOptions spot gives InstanceLifecycle=spot", d.get("InstanceLifecycle") == "spot", d.get("InstanceLifecycle"))

    before = instance_count(ec2)
    c.error("RunInstances on an in-use ENI fails", lambda: launch(ec2, NetworkInterfaces=on_eni(eni_id)),
            "InvalidNetworkInterface.InUse", f"Interface: [{eni_id}] in use.")
    c.ok("... and launches nothing", instance_count(ec2) == before, (before, instance_count(ec2)))
    described_eni = eni_or_none(ec2, eni_id)
    c.ok("... and the ENI stays attached to the first instance",
         described_eni.get("Attachment", {}).get("InstanceId") == first["InstanceId"], described_eni.get("Attachment"))

    other = launch(ec2, SubnetId=net["b"])["Instances"][0]
    c.error("AttachNetworkInterface of an in-use ENI fails",
            lambda: ec2.attach_network_interface(NetworkInterfaceId=eni_id, InstanceId=other["InstanceId"], DeviceIndex=1),
            "InvalidNetworkInterface.InUse", f"Interface: [{eni_id}] in use.")

    free = new_eni(ec2, net["b"])
    try:
        ec2.attach_network_interface(NetworkInterfaceId=free["NetworkInterfaceId"], InstanceId=other["InstanceId"], DeviceIndex=1)
        c.ok("AttachNetworkInterface of a free ENI works", True)
    except ClientError as e:
        c.ok("AttachNetworkInterface of a free ENI works", False, e)


def check_private_ip(ec2: Any, c: Checks) -> None:
    net = network(ec2, 13)
    sub = net["subnet"](3, "us-east-1a")  # 10.13.3.0/24
    new_eni(ec2, sub, PrivateIpAddress="10.13.3.10")
    new_eni(ec2, sub, PrivateIpAddresses=[
        {"PrivateIpAddress": "10.13.3.12", "Primary": True},
        {"PrivateIpAddress": "10.13.3.11", "Primary": False},
    ])
    in_use = "InvalidIPAddress.InUse"
    c.error("CreateNetworkInterface with a primary IP already in use",
            lambda: new_eni(ec2, sub, PrivateIpAddress="10.13.3.10"), in_use, "The specified address is already in use.")
    c.error("CreateNetworkInterface with another ENI's secondary IP",
            lambda: new_eni(ec2, sub, PrivateIpAddress="10.13.3.11"), in_use)
    before = instance_count(ec2)
    c.error("RunInstances PrivateIpAddress already in use",
            lambda: launch(ec2, SubnetId=sub, PrivateIpAddress="10.13.3.10"), in_use, "Address 10.13.3.10 is in use.")
    c.error("RunInstances NetworkInterfaces[0].PrivateIpAddress already in use",
            lambda: launch(ec2, NetworkInterfaces=[{"DeviceIndex": 0, "SubnetId": sub, "PrivateIpAddress": "10.13.3.11"}]),
            in_use, "Address 10.13.3.11 is in use.")
    c.ok("failed launches leave nothing behind", instance_count(ec2) == before, (before, instance_count(ec2)))

    bad = "InvalidParameterValue"
    c.error("CreateNetworkInterface with an IP outside the subnet",
            lambda: new_eni(ec2, sub, PrivateIpAddress="10.13.9.9"), bad,
            "Address does not fall within the subnet's address range")
    c.error("RunInstances with an IP outside the subnet",
            lambda: launch(ec2, SubnetId=sub, PrivateIpAddress="10.13.9.9"), bad,
            "Address 10.13.9.9 does not fall within the subnet's address range")
    for ip in ("10.13.3.0", "10.13.3.1", "10.13.3.2", "10.13.3.3", "10.13.3.255"):
        c.error(f"CreateNetworkInterface with reserved {ip}",
                lambda ip=ip: new_eni(ec2, sub, PrivateIpAddress=ip), bad,
                "Address is in subnet's reserved address range")
        c.error(f"RunInstances with reserved {ip}",
                lambda ip=ip: launch(ec2, SubnetId=sub, PrivateIpAddress=ip), bad,
                f"Address {ip} is in subnet's reserved address range")
    try:
        ok = launch(ec2, SubnetId=sub, PrivateIpAddress="10.13.3.20")["Instances"][0]
        c.ok("a free requested IP is used", ok.get("PrivateIpAddress") == "10.13.3.20", ok.get("PrivateIpAddress"))
    except ClientError as e:
        c.ok("a free requested IP is used", False, e)

    # A /28 has 16 addresses, 11 usable. Take .4 (the first usable) by hand,
    # then let EC2 pick the rest: all distinct, none reserved, then exhaustion.
    small = net["subnet"](4, "us-east-1a", 28)  # 10.13.4.0/28
    new_eni(ec2, small, PrivateIpAddress="10.13.4.4")
    picked = ["10.13.4.4"]
    inst = launch(ec2, SubnetId=small)["Instances"][0]
    picked.append(inst.get("PrivateIpAddress"))
    try:
        for _ in range(9):
            picked.append(new_eni(ec2, small)["PrivateIpAddress"])
    except ClientError as e:
        c.ok("automatic IPs fill the subnet", False, e)
    usable = {f"10.13.4.{i}" for i in range(4, 15)}
    c.ok("automatic IPs are unique and never reserved", len(set(picked)) == len(picked) and set(picked) <= usable,
         sorted(picked))
    c.error("CreateNetworkInterface in a full subnet",
            lambda: new_eni(ec2, small), "InsufficientFreeAddressesInSubnet")
    before = instance_count(ec2)
    c.error("RunInstances in a full subnet", lambda: launch(ec2, SubnetId=small), "InsufficientFreeAddressesInSubnet")
    c.ok("... launches nothing", instance_count(ec2) == before, (before, instance_count(ec2)))


def check_client_token(ec2: Any, c: Checks) -> None:
    net = network(ec2, 14)
    token = unique("tok")
    first = launch(ec2, SubnetId=net["a"], ClientToken=token)
    before = instance_count(ec2)
    again = launch(ec2, SubnetId=net["a"], ClientToken=token)
    c.ok("same token returns the same reservation and instance",
         again["ReservationId"] == first["ReservationId"]
         and again["Instances"][0]["InstanceId"] == first["Instances"][0]["InstanceId"],
         (first["ReservationId"], again["ReservationId"]))
    c.ok("... and launches nothing", instance_count(ec2) == before, (before, instance_count(ec2)))
    c.ok("DescribeInstances shows the ClientToken",
         describe_instance(ec2, first["Instances"][0]["InstanceId"]).get("ClientToken") == token)

    ec2.terminate_instances(InstanceIds=[first["Instances"][0]["InstanceId"]])
    later = launch(ec2, SubnetId=net["a"], ClientToken=token)
    c.ok("same token after termination still returns the original instance",
         later["Instances"][0]["InstanceId"] == first["Instances"][0]["InstanceId"], later["Instances"][0]["InstanceId"])
    c.ok("... and launches nothing", instance_count(ec2) == before, (before, instance_count(ec2)))
    c.error("same token, different parameters",
            lambda: launch(ec2, SubnetId=net["a"], ClientToken=token, InstanceType="t3.small"),
            "IdempotentParameterMismatch")

    failed_token = unique("tok")
    c.error("a failing request (unknown subnet)",
            lambda: launch(ec2, SubnetId="subnet-00000000000000000", ClientToken=failed_token), "InvalidSubnetID.NotFound")
    try:
        retry = launch(ec2, SubnetId=net["a"], ClientToken=failed_token)
        c.ok("a failed request does not consume its token", bool(retry["Instances"]))
    except ClientError as e:
        c.ok("a failed request does not consume its token", False, e)
    other = launch(ec2, SubnetId=net["a"], ClientToken=unique("tok"))
    c.ok("a different token launches a new instance",
         other["Instances"][0]["InstanceId"] != first["Instances"][0]["InstanceId"])


def check_eni_az(ec2: Any, c: Checks) -> None:
    net = network(ec2, 15)
    eni = new_eni(ec2, net["a"])  # us-east-1a
    before = instance_count(ec2)
    c.error("RunInstances on an ENI with Placement in another AZ",
            lambda: launch(ec2, NetworkInterfaces=on_eni(eni["NetworkInterfaceId"]),
                           Placement={"AvailabilityZone": "us-east-1b"}),
            "InvalidParameterValue",
            f"Value (us-east-1b) for parameter availabilityZone is invalid. "
            f"Subnet '{net['a']}' is in the availability zone us-east-1a")
    c.ok("... launches nothing", instance_count(ec2) == before, (before, instance_count(ec2)))
    c.error("RunInstances with SubnetId and Placement in another AZ",
            lambda: launch(ec2, SubnetId=net["a"], Placement={"AvailabilityZone": "us-east-1b"}),
            "InvalidParameterValue")
    in_b = launch(ec2, SubnetId=net["b"])["Instances"][0]
    c.error("AttachNetworkInterface across AZs",
            lambda: ec2.attach_network_interface(NetworkInterfaceId=eni["NetworkInterfaceId"],
                                                 InstanceId=in_b["InstanceId"], DeviceIndex=1),
            "InvalidParameterCombination",
            "You may not attach a network interface to an instance if they are not in the same availability zone")
    try:
        same = launch(ec2, NetworkInterfaces=on_eni(eni["NetworkInterfaceId"]),
                      Placement={"AvailabilityZone": "us-east-1a"})["Instances"][0]
        c.ok("RunInstances on the ENI in its own AZ works", same["Placement"]["AvailabilityZone"] == "us-east-1a")
    except ClientError as e:
        c.ok("RunInstances on the ENI in its own AZ works", False, e)


RULES: dict[str, Callable[[Any, Checks], None]] = {
    "eni-release": check_eni_release,
    "eni-in-use": check_eni_in_use,
    "private-ip": check_private_ip,
    "client-token": check_client_token,
    "eni-az": check_eni_az,
}


def run_rules(disable: str = "", verbose: bool = True) -> dict[str, bool]:
    emulator = Emulator(disable)
    ec2 = emulator.client("ec2")
    outcome = {}
    try:
        for name, rule in RULES.items():
            checks = Checks()
            try:
                rule(ec2, checks)
            except Exception as e:  # noqa: BLE001 - an unexpected error fails the rule
                checks.ok("no unexpected error", False, repr(e))
            outcome[name] = checks.passed
            if verbose:
                print(f"  {'PASS' if checks.passed else 'FAIL'}  {name}")
                for description, ok, detail in checks.results:
                    if not ok:
                        print(f"          x {description}: {detail}")
    finally:
        emulator.close()
    return outcome


def check_launcher() -> bool:
    checks = Checks()
    emulator = Emulator()
    checks.ok("prints 'TETHER_MOTO_READY port=<N>'", emulator.ready_line == f"TETHER_MOTO_READY port={emulator.port}")
    table = unique("t")
    dynamodb = emulator.client("dynamodb")
    dynamodb.create_table(TableName=table, KeySchema=[{"AttributeName": "k", "KeyType": "HASH"}],
                          AttributeDefinitions=[{"AttributeName": "k", "AttributeType": "S"}],
                          BillingMode="PAY_PER_REQUEST")
    checks.ok("serves DynamoDB on the same port", table in dynamodb.list_tables()["TableNames"])
    started = time.monotonic()
    code = emulator.close()
    checks.ok("exits on stdin EOF", code == 0 and time.monotonic() - started < 5, code)
    emulator = Emulator()
    emulator.proc.send_signal(signal.SIGTERM)
    try:
        checks.ok("exits on SIGTERM", emulator.proc.wait(timeout=5) == 0)
    except subprocess.TimeoutExpired:
        emulator.proc.kill()
        checks.ok("exits on SIGTERM", False, "still running")
    print(f"  {'PASS' if checks.passed else 'FAIL'}  launcher")
    for description, ok, detail in checks.results:
        if not ok:
            print(f"          x {description}: {detail}")
    return checks.passed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--once", action="store_true", help="only run with all patches")
    args = parser.parse_args()

    print("== launcher contract")
    good = check_launcher()
    print("== all patches active")
    good &= all(run_rules().values())
    if args.once:
        return 0 if good else 1
    print("== each patch disabled in turn (its rule must FAIL, the others PASS)")
    for patch in PATCH_NAMES:
        print(f"-- TETHER_MOTO_DISABLE={patch}")
        outcome = run_rules(patch)
        expected = {name: name != patch for name in RULES}
        if outcome != expected:
            print(f"   UNEXPECTED: {outcome}")
            good = False
    print("== all patches disabled (plain moto 5.2.5)")
    run_rules(",".join(PATCH_NAMES))
    print("RESULT:", "OK" if good else "NOT OK")
    return 0 if good else 1


if __name__ == "__main__":
    sys.exit(main())
