#!/usr/bin/env python3
"""Tether's EC2/DynamoDB emulator: a pinned moto server plus the AWS rules moto skips.

Usage:
    python tests/emulator/tether_moto.py --port 0

Starts moto (exactly the version in requirements.txt) on 127.0.0.1 only, after
monkeypatching moto's EC2 backend so that it enforces a few AWS rules Tether's
tests depend on (see README.md in this directory). Once the server listens it
prints exactly one line to stdout:

    TETHER_MOTO_READY port=<N>

The process exits (os._exit) as soon as its stdin reaches EOF, which is what
happens when the parent test process dies or closes the pipe, and on
SIGTERM/SIGINT. Pass --ignore-stdin to run it by hand with no pipe attached.

Environment:
    TETHER_MOTO_DISABLE  comma-separated patch names NOT to apply, e.g.
                         "eni-release,client-token". Used to prove each rule's
                         test fails without its patch.

Each patch below is one function: its docstring says what AWS does (and which
AWS document says so) and what moto 5.2.5 does instead.
"""

from __future__ import annotations

import argparse
import copy
import functools
import ipaddress
import logging
import os
import random
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

import moto
from moto.core.responses import ActionResult
from moto.ec2.exceptions import (
    EC2ClientError,
    InvalidLaunchTemplateVersionNotFound,
    InvalidVolumeAttachmentError,
    InvalidVolumeDetachmentError,
)
from moto.ec2 import utils as ec2_utils
from moto.ec2.utils import random_public_ip
from moto.ec2.models import EC2Backend
from moto.ec2.models.elastic_block_store import VolumeAttachment
from moto.ec2.models.elastic_ip_addresses import ElasticAddress
from moto.ec2.models.instances import Instance
from moto.ec2.models.launch_templates import LaunchTemplate
from moto.ec2.models.subnets import Subnet
from moto.core.utils import utcnow
from moto.ec2.responses import EC2Response
from moto.ec2.responses.elastic_block_store import ElasticBlockStore
from moto.ec2.responses.elastic_network_interfaces import ElasticNetworkInterfaces
from moto.ec2.responses.subnets import Subnets
from moto.ec2.responses.instances import InstanceResponse
from moto.ec2.responses.launch_templates import LaunchTemplates
from moto.moto_server.threaded_moto_server import ThreadedMotoServer

PINNED_MOTO_VERSION = "5.2.5"
PATCH_NAMES = (
    "eni-release",
    "eni-in-use",
    "eni-delete",
    "private-ip",
    "cidr-reservation",
    "client-token",
    "eni-az",
    "capacity",
    "volume-settings",
    "nic-sg",
    "device-index",
    "secondary-ip",
    "ipv6",
    "public-ip",
    "capacity-reservation",
    "launch-template",
    "source-dest",
    "volume-attach",
    "volume-termination",
    "instance-status",
)

log = logging.getLogger("tether_moto")

# moto's server is threaded and its EC2 models take no locks. Every patched
# check-then-act sequence (validate a launch, then launch) runs under this lock
# so two concurrent requests cannot both pass a check. Re-entrant because
# RunInstances calls CreateNetworkInterface internally.
EC2_LOCK = threading.RLock()


def ec2_error(code: str, message: str) -> EC2ClientError:
    """An EC2 client error; moto serializes it as HTTP 400 with this code/message."""
    return EC2ClientError(code, message)


def is_true(value: Any) -> bool:
    """Query-API booleans arrive as bool or as the strings "true"/"false"."""
    return value is True or str(value).lower() == "true"


def locked(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with EC2_LOCK:
            return fn(*args, **kwargs)

    return wrapper


# --------------------------------------------------------------------------
# Hook points shared by several patches.
#
# RunInstances and AttachNetworkInterface are each wrapped once; patches
# register checks on them, which run in registration order, under EC2_LOCK,
# BEFORE moto creates anything. So a request that fails a check launches
# nothing (moto adds the reservation to its table before building instances,
# so failing later would leave an empty reservation behind).
# --------------------------------------------------------------------------

# check(backend, count, kwargs); may raise, may adjust kwargs for the launch.
LaunchCheck = Callable[[Any, int, dict[str, Any]], None]
# after(backend, kwargs, reservation); runs after a successful launch.
LaunchFollowUp = Callable[[Any, dict[str, Any], Any], None]
# check(backend, eni, instance, device_index); may raise, may adjust the ENI.
AttachCheck = Callable[[Any, Any, Any, int], None]

# exclusion(backend, subnet) -> addresses EC2 never picks by itself (for an
# ENI, an instance or a secondary IP that does not name its address), though a
# request that names one may still get it. private-ip's picks skip them.
PickExclusion = Callable[[Any, Any], set[str]]

_launch_checks: list[LaunchCheck] = []
_launch_follow_ups: list[LaunchFollowUp] = []
_attach_checks: list[AttachCheck] = []
_pick_exclusions: list[PickExclusion] = []


def _install_hook_points() -> None:
    original_run_instances = EC2Backend.run_instances
    original_attach = EC2Backend.attach_network_interface

    @locked
    def run_instances(
        self: Any,
        image_id: str,
        count: int,
        user_data: Any,
        security_group_names: list[str],
        **kwargs: Any,
    ) -> Any:
        for check in _launch_checks:
            check(self, int(count), kwargs)
        reservation = original_run_instances(
            self, image_id, count, user_data, security_group_names, **kwargs
        )
        for follow_up in _launch_follow_ups:
            follow_up(self, kwargs, reservation)
        return reservation

    @locked
    def attach_network_interface(
        self: Any, eni_id: str, instance_id: str, device_index: int
    ) -> Any:
        eni = self.get_network_interface(eni_id)
        instance = self.get_instance(instance_id)
        for check in _attach_checks:
            check(self, eni, instance, int(device_index))
        return original_attach(self, eni_id, instance_id, device_index)

    EC2Backend.run_instances = run_instances
    EC2Backend.attach_network_interface = attach_network_interface


# ---- helpers for RunInstances' NetworkInterfaces parameter ----------------


def nic_specs(kwargs: dict[str, Any]) -> list[dict[str, Any]]:
    return list(kwargs.get("nics") or [])


def device_index(spec: dict[str, Any]) -> int:
    return int(spec.get("DeviceIndex", 0))


def existing_enis(backend: Any, kwargs: dict[str, Any]) -> list[tuple[int, Any]]:
    """(device index, ENI) for each NetworkInterfaceId the launch names.

    Raises InvalidNetworkInterfaceID.NotFound for an unknown id, as AWS does.
    """
    return [
        (device_index(spec), backend.get_network_interface(spec["NetworkInterfaceId"]))
        for spec in nic_specs(kwargs)
        if spec.get("NetworkInterfaceId")
    ]


def primary_eni(instance: Any) -> Any:
    """The ENI at device index 0, or None (a terminated instance has none)."""
    return instance.nics.get(0)


def eips_on(backend: Any, eni: Any) -> list[ElasticAddress]:
    return [eip for eip in backend.addresses if eip.eni is eni]


# --------------------------------------------------------------------------
# Patch: eni-release
# --------------------------------------------------------------------------


def patch_eni_release() -> None:
    """TerminateInstances releases the instance's network interfaces.

    AWS ("Network interface attributes" / DeleteOnTermination in the EC2 User
    Guide, "Elastic network interfaces"; InstanceNetworkInterfaceSpecification
    in the EC2 API Reference): when an instance terminates, each attached ENI
    is detached. An ENI whose attachment has DeleteOnTermination=false becomes
    `available` with no attachment and keeps its private IPs and its Elastic IP
    association (DescribeAddresses still shows NetworkInterfaceId and
    PrivateIpAddress, no InstanceId). An ENI with DeleteOnTermination=true is
    deleted, which disassociates its Elastic IP. ENIs that RunInstances creates
    default to DeleteOnTermination=true; an existing ENI named at launch, or one
    attached with AttachNetworkInterface, defaults to false. The flag can be
    changed with ModifyNetworkInterfaceAttribute Attachment.DeleteOnTermination.

    moto 5.2.5: terminating leaves every ENI `in-use`, attached to the
    terminated instance, which still lists it; ENIs created at launch default
    to DeleteOnTermination=false, so nothing is ever deleted;
    ModifyNetworkInterfaceAttribute ignores the Attachment parameter; an EIP
    associated with an ENI never shows the InstanceId the ENI is attached to.
    """
    original_terminate = Instance.terminate

    def terminate(self: Instance) -> Any:
        if self.state == "terminated":
            # Already terminated: a no-op, as in AWS (its ENIs are released).
            return copy.copy(self._state)
        released = list(self.nics.values())
        for eni in released:
            self.detach_eni(eni)
        # With no NICs left, moto's terminate only handles volumes/state/etc.
        previous_state = original_terminate(self)
        backend = self.ec2_backend
        for eni in released:
            if eni.delete_on_termination:
                for eip in eips_on(backend, eni):
                    eip.eni = None
                    eip.instance = None
                    eip.association_id = None
                eni.delete()
            else:
                # The flag belongs to the attachment, which is gone.
                eni.delete_on_termination = False
                if not eips_on(backend, eni):
                    # An auto-assigned public IPv4 address is released on
                    # termination; an Elastic IP stays with the ENI.
                    eni.public_ip = None
        return previous_state

    Instance.terminate = locked(terminate)

    # A terminated instance has no NICs; moto's properties assume nics[0].
    def _private_ip(self: Instance) -> str | None:
        eni = primary_eni(self)
        return eni.private_ip_address if eni else None

    def _public_ip(self: Instance) -> str | None:
        eni = primary_eni(self)
        return eni.public_ip if eni else None

    def _private_dns_name(self: Instance) -> str:
        ip = _private_ip(self)
        if not ip:
            return ""
        dashed = ip.replace(".", "-")
        if self.region_name == "us-east-1":
            return f"ip-{dashed}.ec2.internal"
        return f"ip-{dashed}.{self.region_name}.compute.internal"

    def _subnet_id(self: Instance) -> str | None:
        if self._subnet_id:
            return self._subnet_id
        eni = primary_eni(self)
        return eni.subnet.id if eni else None

    Instance.private_ip = property(_private_ip)
    Instance.private_ip_address = property(_private_ip)
    Instance.public_ip = property(_public_ip)
    Instance.public_ip_address = property(_public_ip)
    Instance.private_dns_name = property(_private_dns_name)
    Instance.subnet_id = property(_subnet_id)

    # An EIP associated with an ENI belongs to whatever instance the ENI is
    # attached to now (none after termination, the new one after a relaunch).
    def _eip_instance(self: ElasticAddress) -> Any:
        if self.eni is not None:
            return self.eni.instance
        return self.__dict__.get("_tether_instance")

    def _set_eip_instance(self: ElasticAddress, value: Any) -> None:
        self.__dict__["_tether_instance"] = value

    ElasticAddress.instance = property(_eip_instance, _set_eip_instance)

    # A new attachment's DeleteOnTermination: true for an ENI RunInstances
    # creates (unless the request says otherwise), false for an existing ENI
    # (named at launch or attached later).
    def launch_delete_on_termination(
        backend: Any, kwargs: dict[str, Any], reservation: Any
    ) -> None:
        specs = {device_index(s): s for s in nic_specs(kwargs)}
        for instance in reservation.instances:
            for index, eni in instance.nics.items():
                spec = specs.get(index, {})
                if spec.get("NetworkInterfaceId"):
                    eni.delete_on_termination = False
                elif "DeleteOnTermination" in spec:
                    eni.delete_on_termination = is_true(spec["DeleteOnTermination"])
                else:
                    eni.delete_on_termination = True

    def attach_delete_on_termination(backend: Any, eni: Any, instance: Any, index: int) -> None:
        eni.delete_on_termination = False

    _launch_follow_ups.append(launch_delete_on_termination)
    _attach_checks.append(attach_delete_on_termination)

    # ModifyNetworkInterfaceAttribute: Attachment.{AttachmentId,DeleteOnTermination}.
    original_modify = ElasticNetworkInterfaces.modify_network_interface_attribute

    def modify_network_interface_attribute(self: Any) -> Any:
        attachment = self._get_param("Attachment") or {}
        if "DeleteOnTermination" in attachment:
            eni = self.ec2_backend.get_network_interface(self._get_param("NetworkInterfaceId"))
            attachment_id = attachment.get("AttachmentId")
            if attachment_id is None or eni.attachment_id != attachment_id:
                raise ec2_error(
                    "InvalidAttachmentID.NotFound",
                    f"The network interface attachment ID '{attachment_id}' does not exist",
                )
            eni.delete_on_termination = is_true(attachment["DeleteOnTermination"])
        return original_modify(self)

    ElasticNetworkInterfaces.modify_network_interface_attribute = modify_network_interface_attribute


# --------------------------------------------------------------------------
# Patch: eni-in-use
# --------------------------------------------------------------------------


def patch_eni_in_use() -> None:
    """An ENI attached to a live instance cannot be used by another one.

    AWS (EC2 API Reference, "Error codes": InvalidNetworkInterface.InUse, "The
    specified interface is currently in use and cannot be deleted or attached
    to another instance"): RunInstances naming such an ENI in NetworkInterfaces
    fails with HTTP 400 InvalidNetworkInterface.InUse, message
    "Interface: [eni-...] in use." (the form AWS returns, as quoted in public
    bug reports), and launches nothing. AttachNetworkInterface of such an ENI
    fails with the same code. A launch on a free ENI boots the instance in the
    ENI's subnet, VPC and Availability Zone.

    DeleteNetworkInterface of an ENI attached to a live instance fails with the
    same code ("The network interface 'eni-...' is currently in use."): an ENI can
    only be deleted once its instance has released it.

    moto 5.2.5: silently re-attaches the ENI to the new instance (the old
    instance keeps listing it too), places the instance in the requested
    Placement.AvailabilityZone or in <region>a, not in the ENI's AZ, and deletes
    attached ENIs.
    """

    def in_use_error(eni: Any) -> EC2ClientError:
        return ec2_error("InvalidNetworkInterface.InUse", f"Interface: [{eni.id}] in use.")

    def attached_to_live_instance(eni: Any) -> bool:
        return eni.instance is not None and eni.instance.state != "terminated"

    def check_launch(backend: Any, count: int, kwargs: dict[str, Any]) -> None:
        named = existing_enis(backend, kwargs)
        for _, eni in named:
            if attached_to_live_instance(eni):
                raise in_use_error(eni)
        primary = next((eni for index, eni in named if index == 0), None)
        if primary is not None and not kwargs.get("placement"):
            kwargs["placement"] = primary.availability_zone

    def check_attach(backend: Any, eni: Any, instance: Any, index: int) -> None:
        if attached_to_live_instance(eni):
            raise in_use_error(eni)

    _launch_checks.append(check_launch)
    _attach_checks.append(check_attach)

    original_delete = EC2Backend.delete_network_interface

    @locked
    def delete_network_interface(self: Any, eni_id: str) -> None:
        eni = self.enis.get(eni_id)
        if eni is not None and attached_to_live_instance(eni):
            raise ec2_error("InvalidNetworkInterface.InUse", f"The network interface '{eni_id}' is currently in use.")
        original_delete(self, eni_id)

    EC2Backend.delete_network_interface = delete_network_interface


# --------------------------------------------------------------------------
# Patch: eni-delete
# --------------------------------------------------------------------------


def patch_eni_delete() -> None:
    """Deleting an ENI disassociates the Elastic IP associated with it.

    AWS (EC2 User Guide, "Delete a network interface": "Deleting a network
    interface releases all attributes associated with the interface and
    releases any private IP addresses or Elastic IP addresses to be used by
    another instance"): after DeleteNetworkInterface the Elastic IP stays
    allocated to the account but is no longer associated: DescribeAddresses
    shows no AssociationId, NetworkInterfaceId, PrivateIpAddress or InstanceId,
    and the address can be associated with another ENI without
    AllowReassociation, or released (which in a VPC requires it to be
    disassociated: ReleaseAddress, InvalidIPAddress.InUse).

    moto 5.2.5: the Elastic IP keeps pointing at the deleted ENI: DescribeAddresses
    still shows its AssociationId, NetworkInterfaceId and PrivateIpAddress, and
    AssociateAddress without AllowReassociation fails with Resource.AlreadyAssociated.
    """
    original_delete = EC2Backend.delete_network_interface

    @locked
    def delete_network_interface(self: Any, eni_id: str) -> None:
        eni = self.enis.get(eni_id)
        # Raises (unknown ENI, or in use with eni-in-use) before anything changes.
        original_delete(self, eni_id)
        if eni is None:
            return
        for eip in eips_on(self, eni):
            eip.eni = None
            eip.instance = None
            eip.association_id = None
        eni.public_ip = None

    EC2Backend.delete_network_interface = delete_network_interface


# --------------------------------------------------------------------------
# Patch: private-ip
# --------------------------------------------------------------------------


def reserved_addresses(subnet: Subnet) -> set[str]:
    """The 5 addresses AWS reserves in every subnet: network, +1 (VPC router),
    +2 (DNS), +3 (future use) and the last (broadcast) address."""
    net = subnet.cidr
    return {str(net.network_address + i) for i in range(4)} | {str(net.broadcast_address)}


def addresses_in_use(backend: Any, subnet: Subnet) -> set[str]:
    """Every private IPv4 address an ENI in `subnet` holds (primary or
    secondary), plus addresses moto hands out to non-EC2 users of the subnet
    (e.g. EFS mount targets). moto's own per-instance bookkeeping is ignored:
    an instance's address is its ENI's, and moto never frees the former when an
    ENI is deleted directly."""
    used: set[str] = set()
    for eni in backend.enis.values():
        if eni.subnet is None or eni.subnet.id != subnet.id:
            continue
        if eni.private_ip_address:
            used.add(eni.private_ip_address)
        for entry in eni.private_ip_addresses:
            ip = entry.get("PrivateIpAddress") if isinstance(entry, dict) else entry
            if ip:
                used.add(ip)
    for ip, holder in subnet._subnet_ips.items():
        if not isinstance(holder, Instance):
            used.add(ip)
    return used


def is_ipv4_subnet(subnet: Subnet) -> bool:
    return isinstance(subnet.cidr, ipaddress.IPv4Network)


def validate_requested_ip(backend: Any, subnet: Subnet, ip: str, operation: str) -> None:
    """Raise AWS's error if `ip` cannot be given to a new ENI in `subnet`.

    Messages as AWS words them: RunInstances names the address, the
    CreateNetworkInterface forms do not.
    """
    if not is_ipv4_subnet(subnet):
        return
    named = operation == "RunInstances"
    try:
        address = ipaddress.IPv4Address(ip)
    except ValueError:
        raise ec2_error(
            "InvalidParameterValue", f"Value ({ip}) for parameter privateIpAddress is invalid."
        ) from None
    if address not in subnet.cidr:
        raise ec2_error(
            "InvalidParameterValue",
            f"Address {ip} does not fall within the subnet's address range"
            if named
            else "Address does not fall within the subnet's address range",
        )
    if ip in reserved_addresses(subnet):
        raise ec2_error(
            "InvalidParameterValue",
            f"Address {ip} is in subnet's reserved address range"
            if named
            else "Address is in subnet's reserved address range",
        )
    if ip in addresses_in_use(backend, subnet):
        raise ec2_error(
            "InvalidIPAddress.InUse",
            f"Address {ip} is in use." if named else "The specified address is already in use.",
        )


def unavailable_addresses(backend: Any, subnet: Subnet) -> set[str]:
    """Addresses a new allocation must skip: in use, reserved, held by moto's
    own bookkeeping (possibly stale; skipping it only wastes an address), and
    those other patches exclude from picks (cidr-reservation: subnet CIDR
    reservations)."""
    taken = addresses_in_use(backend, subnet) | reserved_addresses(subnet) | set(subnet._subnet_ips)
    for exclusion in _pick_exclusions:
        taken |= exclusion(backend, subnet)
    return taken


def free_address_count(backend: Any, subnet: Subnet) -> int:
    net = subnet.cidr
    return net.num_addresses - len(
        {ip for ip in unavailable_addresses(backend, subnet) if ipaddress.ip_address(ip) in net}
    )


def insufficient_addresses(subnet: Subnet, operation: str) -> EC2ClientError:
    if operation == "RunInstances":
        message = (
            f"There are not enough free addresses in subnet '{subnet.id}' "
            "to satisfy the requested number of instances."
        )
    else:
        message = "The specified subnet does not have enough free addresses to satisfy the request."
    return ec2_error("InsufficientFreeAddressesInSubnet", message)


def allocate_address(
    backend: Any, subnet: Subnet, operation: str, also_taken: set[str] = frozenset()
) -> str:
    """A free, non-reserved address of `subnet`, picked at random like AWS."""
    net = subnet.cidr
    taken = unavailable_addresses(backend, subnet) | set(also_taken)
    first = int(net.network_address) + 4
    last = int(net.broadcast_address) - 1
    if last < first:
        raise insufficient_addresses(subnet, operation)
    for _ in range(64):
        candidate = str(ipaddress.IPv4Address(random.randint(first, last)))
        if candidate not in taken:
            return candidate
    for value in range(first, last + 1):  # nearly full subnet: scan
        candidate = str(ipaddress.IPv4Address(value))
        if candidate not in taken:
            return candidate
    raise insufficient_addresses(subnet, operation)


def patch_private_ip() -> None:
    """Private IPv4 addresses are unique per subnet and never reserved ones.

    AWS (VPC User Guide, "Subnet CIDR blocks": the first four and the last
    address of every subnet are reserved; EC2 API Reference "Error codes":
    InvalidIPAddress.InUse, InsufficientFreeAddressesInSubnet): a
    CreateNetworkInterface or RunInstances that asks for a private IP
    (PrivateIpAddress top-level or in NetworkInterfaces, or PrivateIpAddresses)
    fails with
      - InvalidIPAddress.InUse when an ENI in the subnet already holds it
        (as primary or secondary address),
      - InvalidParameterValue "... does not fall within the subnet's address
        range" when it is outside the subnet's CIDR,
      - InvalidParameterValue "... is in subnet's reserved address range" for
        one of the 5 reserved addresses.
    An address AWS picks itself is free and not reserved; when none is left
    the call fails with InsufficientFreeAddressesInSubnet.

    moto 5.2.5: CreateNetworkInterface accepts any address (duplicate,
    reserved, outside the subnet); RunInstances accepts an address another ENI
    holds, or a reserved one, and answers HTTP 500 for one outside the subnet
    or held by another instance. Picked addresses: CreateNetworkInterface takes
    a random address of the CIDR (may be reserved, may collide), RunInstances
    counts up from .4 ignoring ENIs, and RunInstances without a subnet invents
    a 10.x.x.x address outside the default VPC it launches into.
    """
    original_create_eni = EC2Backend.create_network_interface
    original_request_ip = Subnet.request_ip
    original_get_available_subnet_ip = Subnet.get_available_subnet_ip

    @locked
    def create_network_interface(
        self: Any,
        subnet: Any,
        private_ip_address: str | list[str] | None,
        private_ip_addresses: list[Any] | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> Any:
        subnet_obj = self.get_subnet(subnet) if isinstance(subnet, str) else subnet
        if not is_ipv4_subnet(subnet_obj):
            return original_create_eni(
                self, subnet, private_ip_address, private_ip_addresses, *args, **kwargs
            )
        requested: list[str] = []
        if isinstance(private_ip_address, list):
            requested += [ip for ip in private_ip_address if ip]
        elif private_ip_address:
            requested.append(private_ip_address)
        for entry in private_ip_addresses or []:
            ip = entry.get("PrivateIpAddress") if isinstance(entry, dict) else entry
            if ip and ip not in requested:
                requested.append(ip)
        for ip in requested:
            validate_requested_ip(self, subnet_obj, ip, "CreateNetworkInterface")
        if not requested:
            private_ip_address = allocate_address(self, subnet_obj, "CreateNetworkInterface")
        secondary_count = int(kwargs.pop("secondary_ips_count", None) or 0)
        eni = original_create_eni(
            self, subnet, private_ip_address, private_ip_addresses, *args, **kwargs
        )
        for _ in range(secondary_count):
            ip = allocate_address(self, subnet_obj, "CreateNetworkInterface")
            eni.private_ip_addresses.append({"Primary": False, "PrivateIpAddress": ip})
        return eni

    def get_available_subnet_ip(self: Subnet, instance: Any) -> str:
        # Used by RunInstances for an instance's primary address.
        if not is_ipv4_subnet(self):
            return original_get_available_subnet_ip(self, instance)
        ip = allocate_address(self.ec2_backend, self, "RunInstances")
        self._subnet_ips[ip] = instance
        return ip

    def request_ip(self: Subnet, ip: str, instance: Any) -> None:
        # An entry held by an Instance is moto's stale per-instance record
        # (see addresses_in_use); RunInstances already validated the address.
        if isinstance(self._subnet_ips.get(ip), Instance):
            del self._subnet_ips[ip]
        original_request_ip(self, ip, instance)

    def check_launch(backend: Any, count: int, kwargs: dict[str, Any]) -> None:
        specs = nic_specs(kwargs)
        primary_spec = next((s for s in specs if device_index(s) == 0), {})
        if primary_spec.get("NetworkInterfaceId"):
            primary_subnet_id = None  # the instance takes the existing ENI's address
        else:
            primary_subnet_id = kwargs.get("subnet_id") or primary_spec.get("SubnetId")
            if not primary_subnet_id:
                # No subnet at all: AWS uses the default subnet of the AZ; moto
                # would invent an address outside it ("EC2-Classic" mode).
                zone = kwargs.get("placement") or backend.region_name + "a"
                default = backend.get_default_subnets().get(zone)
                if default is not None:
                    kwargs["subnet_id"] = primary_subnet_id = default.id

        # (subnet, requested address or None) for every ENI the launch creates.
        new_enis: list[tuple[Subnet, str | None]] = []
        if primary_subnet_id:
            requested = kwargs.get("private_ip") or primary_spec.get("PrivateIpAddress")
            for entry in primary_spec.get("PrivateIpAddresses") or []:
                if not requested and is_true(entry.get("Primary")):
                    requested = entry.get("PrivateIpAddress")
            new_enis.append((backend.get_subnet(primary_subnet_id), requested))
        for spec in specs:
            if device_index(spec) == 0 or spec.get("NetworkInterfaceId"):
                continue
            subnet_id = spec.get("SubnetId") or primary_subnet_id
            if subnet_id:
                new_enis.append((backend.get_subnet(subnet_id), spec.get("PrivateIpAddress")))

        seen: set[str] = set()
        needed: dict[str, int] = {}
        for subnet, ip in new_enis:
            if not is_ipv4_subnet(subnet):
                continue
            if ip:
                if count > 1:
                    raise ec2_error(
                        "InvalidParameterCombination",
                        "A private IP address cannot be specified when launching more than one instance.",
                    )
                validate_requested_ip(backend, subnet, ip, "RunInstances")
                if ip in seen:
                    raise ec2_error("InvalidIPAddress.InUse", f"Address {ip} is in use.")
                seen.add(ip)
            else:
                needed[subnet.id] = needed.get(subnet.id, 0) + count
        for subnet_id, n in needed.items():
            subnet = backend.get_subnet(subnet_id)
            if free_address_count(backend, subnet) < n:
                raise insufficient_addresses(subnet, "RunInstances")

    EC2Backend.create_network_interface = create_network_interface
    Subnet.get_available_subnet_ip = get_available_subnet_ip
    Subnet.request_ip = request_ip
    _launch_checks.append(check_launch)


# --------------------------------------------------------------------------
# Patch: cidr-reservation
# --------------------------------------------------------------------------


def subnets_of_vpc(backend: Any, vpc_id: str) -> list[Subnet]:
    return [s for zone in backend.subnets.values() for s in zone.values() if s.vpc_id == vpc_id]


def patch_cidr_reservation() -> None:
    """EC2 never picks an address in a subnet CIDR reservation; deleting the
    reservation frees its unused addresses.

    AWS (VPC User Guide, "Subnet CIDR reservations"; EC2 API Reference,
    CreateSubnetCidrReservation): a reservation is a range "that you set aside
    so that Amazon can't assign them to your network interfaces". Type
    `explicit`: "You manually assign IP addresses to network interfaces" (the
    guide's earlier wording: "AWS does not use the IP addresses"), so EC2 never
    picks one for an ENI, an instance or a secondary IP that does not name its
    address (CreateNetworkInterface without PrivateIpAddress, RunInstances
    creating its own interface, SecondaryPrivateIpAddressCount); a request that
    names one gets it, subject to private-ip's checks (in use, ...). Type
    `prefix`: the range is for prefixes delegated to ENIs, so single addresses
    are not picked from it either. "When you create a subnet CIDR reservation,
    the IP address range can include addresses that are already in use.
    Creating a subnet reservation does not unassign any IP addresses that are
    already in use." "When you reserve multiple CIDR ranges within the same
    VPC, the CIDR ranges cannot overlap" (InvalidParameterValue "Reservation
    CIDR ... has overlap with existing reserved CIDR block", moto's wording).
    "When you delete a subnet reservation, the unused IP addresses are
    available for Amazon to assign to your network interfaces."

    moto 5.2.5: records a reservation's addresses in the subnet's
    `_reserved_ips`, which only its own RunInstances counter skips
    (CreateNetworkInterface picks anywhere in the CIDR), and never removes
    them: after DeleteSubnetCidrReservation the addresses stay reserved for
    good; it drops a reservation's Description (GetSubnetCidrReservations then
    lists none). Its overlap check looks at the reservation's subnet only (the same
    thing for IPv4, since a reservation lies in its subnet and moto refuses
    overlapping subnets in a VPC). Unknown reservation ids already fail with
    InvalidSubnetCidrReservationID.NotFound.
    """
    original_overlaps = Subnet._cidr_overlaps_with_existing_reservation
    original_delete = Subnet.delete_subnet_cidr_reservation

    def reserved(backend: Any, subnet: Subnet) -> set[str]:
        return {str(ip) for ip in subnet._reserved_ips if isinstance(ip, ipaddress.IPv4Address)}

    def overlaps_in_vpc(self: Subnet, cidr: Any) -> bool:
        return any(original_overlaps(s, cidr) for s in subnets_of_vpc(self.ec2_backend, self.vpc_id))

    def delete_subnet_cidr_reservation(self: Subnet, reservation_id: str) -> Any:
        deleted = original_delete(self, reservation_id)  # None: not this subnet's
        if deleted is not None:
            # Only what no remaining reservation covers (they cannot overlap,
            # but moto's set is shared by all of them).
            still = [r.cidr for r in self._cidr_reservations if r.cidr.version == deleted.cidr.version]
            self._reserved_ips = {
                ip
                for ip in self._reserved_ips
                if ip.version != deleted.cidr.version
                or ip not in deleted.cidr
                or any(ip in cidr for cidr in still)
            }
        return deleted

    original_create_response = Subnets.create_subnet_cidr_reservation

    def create_subnet_cidr_reservation_response(self: Subnets) -> Any:
        # moto drops the Description: the reservation keeps it (and lists it) as AWS does.
        answer = original_create_response(self)
        reservation = answer.result.get("SubnetCidrReservation") if hasattr(answer, "result") else None
        if reservation is not None:
            reservation.description = self._get_param("Description")
        return answer

    Subnets.create_subnet_cidr_reservation = create_subnet_cidr_reservation_response
    Subnet._cidr_overlaps_with_existing_reservation = overlaps_in_vpc
    Subnet.delete_subnet_cidr_reservation = delete_subnet_cidr_reservation
    EC2Backend.create_subnet_cidr_reservation = locked(EC2Backend.create_subnet_cidr_reservation)
    EC2Backend.delete_subnet_cidr_reservation = locked(EC2Backend.delete_subnet_cidr_reservation)
    _pick_exclusions.append(reserved)


# --------------------------------------------------------------------------
# Patch: client-token
# --------------------------------------------------------------------------

# Query parameters that are not part of "the request" for idempotency.
_NOT_FINGERPRINTED = {"Action", "Version", "ClientToken", "DryRun", "Placement.AvailabilityZone"}


def patch_client_token() -> None:
    """RunInstances with a ClientToken is idempotent.

    AWS (EC2 Developer Guide, "Ensuring idempotency in Amazon EC2 API
    requests"): a client token is valid for at least 24 hours after the
    instance terminates and is scoped to an account and Region. Retrying a
    request that completed successfully with the same token and the same
    parameters returns the original result (same reservation and instance IDs;
    only the state may differ) and launches nothing. Retrying a successful
    request with the same token but different parameters (other than the
    Region or Availability Zone) fails with IdempotentParameterMismatch. The
    guide states both rules for a request that completed successfully: a
    request that failed does not bind the token, so a corrected retry with the
    same token launches normally.

    moto 5.2.5: stores the token on the instance (DescribeInstances shows it)
    but launches a new instance on every call, and DescribeInstances' documented
    `client-token` filter raises NotImplementedError (HTTP 500).
    """
    ec2_utils.filter_dict_attribute_mapping["client-token"] = "client_token"
    original = InstanceResponse.run_instances

    def fingerprint(querystring: dict[str, Any]) -> tuple[tuple[str, tuple[str, ...]], ...]:
        return tuple(
            sorted(
                (key, tuple(values))
                for key, values in querystring.items()
                if key not in _NOT_FINGERPRINTED and not key.startswith("X-Amz-")
            )
        )

    def run_instances(self: Any) -> Any:
        token = self._get_param("ClientToken")
        if not token:
            return original(self)
        backend = self.ec2_backend
        with EC2_LOCK:
            tokens = backend.__dict__.setdefault("_tether_client_tokens", {})
            request = fingerprint(self.querystring)
            if token in tokens:
                reservation_id, first_request = tokens[token]
                if first_request != request:
                    raise ec2_error(
                        "IdempotentParameterMismatch",
                        "Arguments on this idempotent request are inconsistent "
                        "with arguments used in previous request(s).",
                    )
                return ActionResult(backend.reservations[reservation_id])
            result = original(self)  # raises on failure: the token stays unused
            tokens[token] = (result.result.id, request)
            return result

    InstanceResponse.run_instances = run_instances


# --------------------------------------------------------------------------
# Patch: eni-az
# --------------------------------------------------------------------------


def patch_eni_az() -> None:
    """An ENI can only be used by an instance in the ENI's Availability Zone.

    AWS (EC2 User Guide, "Elastic network interfaces": "You can attach a
    network interface in one subnet to an instance in another subnet in the
    same VPC; however, both the network interface and the instance must reside
    in the same Availability Zone"):
      - AttachNetworkInterface across AZs fails with InvalidParameterCombination
        "You may not attach a network interface to an instance if they are not
        in the same availability zone".
      - RunInstances whose Placement.AvailabilityZone differs from the AZ of
        its subnet fails with InvalidParameterValue "Value (<az>) for parameter
        availabilityZone is invalid. Subnet '<subnet>' is in the availability
        zone <subnet-az>"; the same error is used for an existing ENI (whose
        subnet fixes its AZ) at any device index, not only the primary, and for
        a subnet given with SubnetId. Without a Placement, the interface at the
        lowest device index sets the AZ and any other interface elsewhere fails.

    moto 5.2.5: attaches across AZs, launches an instance on an ENI in any AZ
    requested, and ignores Placement when SubnetId names a subnet elsewhere.
    """

    def zone_error(zone: str, subnet: Any) -> EC2ClientError:
        return ec2_error(
            "InvalidParameterValue",
            f"Value ({zone}) for parameter availabilityZone is invalid. "
            f"Subnet '{subnet.id}' is in the availability zone {subnet.availability_zone}",
        )

    def check_launch(backend: Any, count: int, kwargs: dict[str, Any]) -> None:
        # (device index, subnet) of every interface, existing or new, at any
        # index; without a Placement the primary's (lowest index) sets the AZ.
        placed = [(index, eni.subnet) for index, eni in existing_enis(backend, kwargs)]
        if kwargs.get("subnet_id"):
            placed.append((0, backend.get_subnet(kwargs["subnet_id"])))
        for spec in nic_specs(kwargs):
            if spec.get("SubnetId") and not spec.get("NetworkInterfaceId"):
                placed.append((device_index(spec), backend.get_subnet(spec["SubnetId"])))
        subnets = [subnet for _, subnet in sorted(placed, key=lambda p: p[0])]
        zone = kwargs.get("placement") or (subnets[0].availability_zone if subnets else None)
        for subnet in subnets:
            if subnet.availability_zone != zone:
                raise zone_error(zone, subnet)

    def check_attach(backend: Any, eni: Any, instance: Any, index: int) -> None:
        if eni.availability_zone != instance.placement.zone:
            raise ec2_error(
                "InvalidParameterCombination",
                "You may not attach a network interface to an instance if they "
                "are not in the same availability zone",
            )

    _launch_checks.append(check_launch)
    _attach_checks.append(check_attach)


# --------------------------------------------------------------------------
# Patch: capacity (a simulation, not a rule)
# --------------------------------------------------------------------------

# Instance types the emulator has no spot capacity for, and none at all for.
NO_SPOT_CAPACITY = {"p5.48xlarge"}
NO_CAPACITY = {"u-6tb1.112xlarge"}


def patch_capacity() -> None:
    """Some instance types are out of capacity, so capacity fallback can be tested.

    AWS (EC2 API Reference, "Error codes"; EC2 User Guide, "Insufficient instance
    capacity"): RunInstances fails with InsufficientInstanceCapacity when the AZ
    has no capacity for the instance type (in the requested market), with a message
    naming the type and the AZ. Nothing is launched, and the failed request does
    not use up its ClientToken (see client-token). AWS answers HTTP 500; moto
    serializes codes EC2's model does not list as HTTP 400 (Tether goes by the code).

    moto 5.2.5: capacity never runs out.
    """

    def check(backend: Any, count: int, kwargs: dict[str, Any]) -> None:
        instance_type = kwargs.get("instance_type", "")
        spot = str(kwargs.get("instance_market_options") or "").lower() == "spot"
        if instance_type in NO_CAPACITY or (spot and instance_type in NO_SPOT_CAPACITY):
            zone = kwargs.get("placement") or f"{backend.region_name}a"
            raise ec2_error(
                "InsufficientInstanceCapacity",
                f"We currently do not have sufficient {instance_type} capacity in the "
                f"Availability Zone you requested ({zone}). Our system will be working on "
                "provisioning additional capacity.",
            )

    _launch_checks.append(check)


# --------------------------------------------------------------------------
# Patch: volume-settings
# --------------------------------------------------------------------------


def patch_volume_settings() -> None:
    """A launch's block device settings provision the volumes it creates.

    AWS (EC2 API Reference, RunInstances and EbsBlockDevice): each mapping's Iops
    (gp3, io1, io2) and Throughput (gp3) provision the volume made for it, and
    DescribeVolumes reports them.

    moto 5.2.5: drops both from a launch's block device mappings (it parses Iops
    but never passes it on, and does not parse Throughput): the volumes report none.
    """
    original_parse = InstanceResponse._parse_block_device_mapping

    def parse(self: Any) -> list[dict[str, Any]]:
        mappings = original_parse(self)
        given = self._get_param("BlockDeviceMappings", [])
        for mapping, request in zip(mappings, given):
            mapping["Ebs"]["Throughput"] = (request.get("Ebs") or {}).get("Throughput")
        return mappings

    def follow_up(backend: Any, kwargs: dict[str, Any], reservation: Any) -> None:
        for mapping in kwargs.get("block_device_mappings") or []:
            ebs = mapping.get("Ebs") or {}
            for instance in reservation.instances:
                block = instance.block_device_mapping.get(mapping.get("DeviceName"))
                if block is None:
                    continue
                volume = backend.get_volume(block.volume_id)
                if ebs.get("Iops") is not None:
                    volume.iops = int(ebs["Iops"])
                if ebs.get("Throughput") is not None:
                    volume.throughput = int(ebs["Throughput"])

    InstanceResponse._parse_block_device_mapping = parse
    _launch_follow_ups.append(follow_up)


# --------------------------------------------------------------------------
# Patch: nic-sg
# --------------------------------------------------------------------------


def patch_nic_sg() -> None:
    """RunInstances refuses NetworkInterfaces together with instance-level
    security groups.

    AWS (EC2 API Reference, RunInstances, SecurityGroupIds and SecurityGroups:
    "If you specify a network interface, you must specify any security groups
    as part of the network interface instead of using this parameter"): a
    request naming NetworkInterfaces (an existing ENI or a new one) and
    SecurityGroupIds or SecurityGroups fails with InvalidParameterCombination
    "Network interfaces and an instance-level security groups may not be
    specified on the same request" (AWS's wording, quoted in public bug reports:
    aws/aws-sdk-ruby#662, hashicorp/terraform#1188, aws/aws-cli#518 (with
    --security-groups), aws/aws-sdk-php#601). Nothing is launched.

    moto 5.2.5: launches, adding the instance-level groups to each new
    interface (an existing ENI keeps its own); it refuses only the subnet
    combination ("... an instance-level subnet ID ...").
    """
    original = InstanceResponse.run_instances

    def run_instances(self: Any) -> Any:
        if self._get_param("NetworkInterfaces", []) and (
            self._get_param("SecurityGroupIds", []) or self._get_param("SecurityGroups", [])
        ):
            raise ec2_error(
                "InvalidParameterCombination",
                "Network interfaces and an instance-level security groups may not be "
                "specified on the same request",
            )
        return original(self)

    InstanceResponse.run_instances = run_instances


# --------------------------------------------------------------------------
# Patch: device-index
# --------------------------------------------------------------------------


def patch_device_index() -> None:
    """RunInstances refuses two network interfaces at the same device index.

    AWS (EC2 Auto Scaling User Guide, "Network interfaces" in launch templates:
    "You also cannot specify duplicate device indexes across network
    interfaces"; the EC2 message, as Auto Scaling passes it on for a template's
    interfaces: "Each network interface requires a unique device index.",
    Young-ook/terraform-aws-eks#148): RunInstances whose NetworkInterfaces name
    the same DeviceIndex twice (on the same NetworkCardIndex, 0 when unset)
    fails with InvalidParameterValue (the code EC2 gives its sibling "Each
    network interface requires a device index.", hashicorp/packer#2242) and
    launches nothing.

    moto 5.2.5: attaches every interface anyway; the last one at an index wins
    the instance's slot, the others stay `in-use`, attached to an instance that
    does not list them.
    """

    def check_launch(backend: Any, count: int, kwargs: dict[str, Any]) -> None:
        seen: set[tuple[int, int]] = set()
        for spec in nic_specs(kwargs):
            slot = (int(spec.get("NetworkCardIndex") or 0), device_index(spec))
            if slot in seen:
                raise ec2_error(
                    "InvalidParameterValue", "Each network interface requires a unique device index."
                )
            seen.add(slot)

    _launch_checks.append(check_launch)


# --------------------------------------------------------------------------
# Patch: secondary-ip
# --------------------------------------------------------------------------


def patch_secondary_ip() -> None:
    """AssignPrivateIpAddresses holds private-ip's rules for secondary addresses.

    AWS (EC2 API Reference, AssignPrivateIpAddresses: "You can specify specific
    secondary IP addresses, or you can specify the number of secondary IP
    addresses to be automatically assigned from the subnet's CIDR block range";
    AllowReassignment: "Indicates whether to allow an IP address that is already
    assigned to another network interface or instance to be reassigned to the
    specified network interface"; VPC User Guide, "Subnet CIDR blocks": the 5
    reserved addresses; "Error codes": InvalidIPAddress.InUse,
    InsufficientFreeAddressesInSubnet): a secondary private IPv4 address is
    unique in its subnet across every ENI's primary and secondary addresses.
    Naming an address
      - held by any ENI (primary or secondary; this one included) fails with
        InvalidIPAddress.InUse, unless AllowReassignment=true and another ENI
        holds it as a secondary address, which then moves here;
      - outside the subnet, or one of its 5 reserved addresses, fails with
        InvalidParameterValue (private-ip's CreateNetworkInterface messages).
    SecondaryPrivateIpAddressCount picks free, non-reserved addresses, never one
    in a subnet CIDR reservation (with cidr-reservation), all or nothing:
    InsufficientFreeAddressesInSubnet when too few are left. A failed request
    assigns nothing. (CreateNetworkInterface's PrivateIpAddresses and
    SecondaryPrivateIpAddressCount already follow these rules under private-ip.)

    moto 5.2.5: assigns any named address (held by another ENI, reserved, outside
    the subnet) and ignores AllowReassignment; for a count it picks random
    addresses of the whole CIDR, checked against this ENI's own only (so they
    may be reserved, held elsewhere or in a reservation), and loops forever when
    the CIDR has none left.
    """
    original_assign = EC2Backend.assign_private_ip_addresses
    original_response = ElasticNetworkInterfaces.assign_private_ip_addresses
    reassignment = threading.local()

    def held_by(backend: Any, subnet: Subnet, ip: str) -> list[tuple[Any, bool]]:
        """(ENI, is its primary) for each ENI of `subnet` holding `ip`."""
        holders = []
        for eni in backend.enis.values():
            if eni.subnet is None or eni.subnet.id != subnet.id:
                continue
            if eni.private_ip_address == ip:
                holders.append((eni, True))
            elif any(entry.get("PrivateIpAddress") == ip for entry in eni.private_ip_addresses):
                holders.append((eni, False))
        return holders

    @locked
    def assign_private_ip_addresses(
        self: Any,
        eni_id: str,
        private_ip_addresses: list[str] | None = None,
        secondary_ips_count: int | None = None,
    ) -> Any:
        allow_reassignment = getattr(reassignment, "allow", False)
        eni = self.get_network_interface(eni_id)
        subnet = eni.subnet
        if not is_ipv4_subnet(subnet):
            return original_assign(self, eni_id, private_ip_addresses, secondary_ips_count)
        if private_ip_addresses:
            moves: list[tuple[Any, str]] = []
            for ip in private_ip_addresses:
                if private_ip_addresses.count(ip) > 1:
                    raise ec2_error("InvalidIPAddress.InUse", "The specified address is already in use.")
                holders = held_by(self, subnet, ip)
                movable = [
                    (other, ip) for other, primary in holders if other is not eni and not primary
                ]
                if allow_reassignment and holders and len(movable) == len(holders):
                    moves += movable
                    continue
                validate_requested_ip(self, subnet, ip, "AssignPrivateIpAddresses")
            for other, ip in moves:
                other.private_ip_addresses = [
                    e for e in other.private_ip_addresses if e.get("PrivateIpAddress") != ip
                ]
            eni.private_ip_addresses.extend(
                {"Primary": False, "PrivateIpAddress": ip} for ip in private_ip_addresses
            )
            return eni
        picked: set[str] = set()
        for _ in range(int(secondary_ips_count or 0)):
            picked.add(allocate_address(self, subnet, "AssignPrivateIpAddresses", picked))
        eni.private_ip_addresses.extend(
            {"Primary": False, "PrivateIpAddress": ip} for ip in sorted(picked)
        )
        return eni

    def assign_response(self: Any) -> Any:
        # moto's response drops AllowReassignment: hand it to the backend call.
        reassignment.allow = is_true(self._get_param("AllowReassignment"))
        try:
            return original_response(self)
        finally:
            reassignment.allow = False

    EC2Backend.assign_private_ip_addresses = assign_private_ip_addresses
    ElasticNetworkInterfaces.assign_private_ip_addresses = assign_response


# --------------------------------------------------------------------------
# Patch: ipv6
# --------------------------------------------------------------------------


def subnet_ipv6_cidr(subnet: Subnet) -> ipaddress.IPv6Network | None:
    """The subnet's IPv6 CIDR block, or None for an IPv4-only subnet."""
    for association in subnet.ipv6_cidr_block_associations.values():
        block = association.get("ipv6CidrBlock")
        if block:
            return ipaddress.IPv6Network(block, strict=False)
    return None


def ipv6_in_use(backend: Any, subnet: Subnet) -> set[ipaddress.IPv6Address]:
    used = set()
    for eni in backend.enis.values():
        if eni.subnet is not None and eni.subnet.id == subnet.id:
            for ip in eni.ipv6_addresses:
                try:
                    used.add(ipaddress.IPv6Address(ip))
                except ValueError:
                    pass
    return used


def patch_ipv6() -> None:
    """IPv6 addresses only from the subnet's IPv6 CIDR, each on one ENI.

    AWS (EC2 API Reference, CreateNetworkInterface and AssignIpv6Addresses:
    Ipv6Addresses are "from the IPv6 CIDR block range of your subnet",
    Ipv6AddressCount: "Amazon EC2 automatically selects the IPv6 addresses from
    the subnet range", and the two cannot be combined; VPC User Guide, "Subnet
    CIDR blocks": "The first four IPv6 addresses and the last IPv6 address in
    each subnet CIDR block are not available for your use, and they cannot be
    assigned to an EC2 instance"):
      - Ipv6AddressCount or Ipv6Addresses on an ENI in a subnet with no IPv6
        CIDR block: InvalidParameterValue (code and message are our reading,
        not seen in an AWS response; RunInstances' top-level Ipv6AddressCount
        for a new interface in such a subnet is refused the same way, before
        anything launches);
      - both on one request: InvalidParameterCombination "IPv6 addresses and
        IPv6 address count may not be specified on the same request" (AWS's
        RunInstances wording, ansible/ansible#40334; used for
        CreateNetworkInterface too);
      - a named address outside the subnet's IPv6 CIDR, or one of its 5
        reserved ones: InvalidParameterValue; one another ENI (or this one)
        holds: InvalidIPAddress.InUse ("Error codes"; the message is ours);
      - picked addresses are free, not reserved, and distinct.
    A request that fails assigns nothing.

    moto 5.2.5: a count on an IPv4-only subnet silently gives no address
    (AssignIpv6Addresses answers HTTP 500); named addresses are taken as they
    come (any subnet, outside the CIDR, held by another ENI); both parameters
    together are accepted; picks are random in the CIDR, checked against the
    same ENI only.
    """
    original_create_eni = EC2Backend.create_network_interface
    original_assign = EC2Backend.assign_ipv6_addresses

    def no_ipv6(subnet: Subnet) -> EC2ClientError:
        return ec2_error(
            "InvalidParameterValue",
            f"The subnet '{subnet.id}' has no IPv6 CIDR block, so IPv6 addresses "
            "cannot be assigned to its network interfaces.",
        )

    def reserved6(cidr: ipaddress.IPv6Network) -> set[ipaddress.IPv6Address]:
        return {cidr.network_address + i for i in range(4)} | {cidr.broadcast_address}

    def checked(backend: Any, subnet: Subnet, named: list[str], count: int) -> list[str]:
        """The addresses to give: `named` validated, or `count` picked."""
        if named and count:
            raise ec2_error(
                "InvalidParameterCombination",
                "IPv6 addresses and IPv6 address count may not be specified on the same request",
            )
        if not named and not count:
            return []
        cidr = subnet_ipv6_cidr(subnet)
        if cidr is None:
            raise no_ipv6(subnet)
        used = ipv6_in_use(backend, subnet)
        given: list[ipaddress.IPv6Address] = []
        for ip in named:
            try:
                address = ipaddress.IPv6Address(ip)
            except ValueError:
                raise ec2_error(
                    "InvalidParameterValue", f"Value ({ip}) for parameter ipv6Address is invalid."
                ) from None
            if address not in cidr:
                raise ec2_error(
                    "InvalidParameterValue",
                    f"Address {ip} does not fall within the subnet's IPv6 address range",
                )
            if address in reserved6(cidr):
                raise ec2_error(
                    "InvalidParameterValue", f"Address {ip} is in subnet's reserved address range"
                )
            if address in used or address in given:
                raise ec2_error("InvalidIPAddress.InUse", f"Address {ip} is in use.")
            given.append(address)
        taken = used | reserved6(cidr)
        while len(given) < len(named) + count:
            candidate = cidr.network_address + random.getrandbits(128 - cidr.prefixlen)
            if candidate not in taken and candidate not in given:
                given.append(candidate)
        return [str(a) for a in given]

    @locked
    def create_network_interface(
        self: Any, subnet: Any, private_ip_address: Any, *args: Any, **kwargs: Any
    ) -> Any:
        subnet_obj = self.get_subnet(subnet) if isinstance(subnet, str) else subnet
        kwargs["ipv6_addresses"] = checked(
            self,
            subnet_obj,
            list(kwargs.get("ipv6_addresses") or []),
            int(kwargs.get("ipv6_address_count") or 0),
        )
        kwargs["ipv6_address_count"] = 0
        return original_create_eni(self, subnet, private_ip_address, *args, **kwargs)

    @locked
    def assign_ipv6_addresses(
        self: Any, eni_id: str, ipv6_addresses: list[str] | None = None, ipv6_count: int | None = None
    ) -> Any:
        eni = self.get_network_interface(eni_id)
        given = checked(self, eni.subnet, list(ipv6_addresses or []), int(ipv6_count or 0))
        return original_assign(self, eni_id, given, 0)

    def check_launch(backend: Any, count: int, kwargs: dict[str, Any]) -> None:
        # moto gives the top-level Ipv6AddressCount to each interface it creates.
        if not kwargs.get("ipv6_address_count"):
            return
        subnet_ids = [kwargs.get("subnet_id")] + [
            spec.get("SubnetId") for spec in nic_specs(kwargs) if not spec.get("NetworkInterfaceId")
        ]
        for subnet_id in filter(None, subnet_ids):
            subnet = backend.get_subnet(subnet_id)
            if subnet_ipv6_cidr(subnet) is None:
                raise no_ipv6(subnet)

    EC2Backend.create_network_interface = create_network_interface
    EC2Backend.assign_ipv6_addresses = assign_ipv6_addresses
    _launch_checks.append(check_launch)


# --------------------------------------------------------------------------
# Patch: public-ip
# --------------------------------------------------------------------------

# The ENI attribute ModifyNetworkInterfaceAttribute AssociatePublicIpAddress sets.
_PUBLIC_IP_ATTR = "_tether_associate_public_ip"


def patch_public_ip() -> None:
    """An existing ENI's public IPv4 setting, and RunInstances' limits on it.

    AWS (EC2 API Reference, ModifyNetworkInterfaceAttribute,
    AssociatePublicIpAddress: "Indicates whether to assign a public IPv4 address
    to a network interface. This option can be enabled for any network interface
    but will only apply to the primary network interface (eth0)"; EC2 User
    Guide, "Manage the IPv4 addresses for your EC2 instances": "You can unassign
    the public IP address from your instance after launch by managing the IP
    addresses associated with a network interface", "You can't auto-assign a
    public IP address if you specify more than one network interface.
    Additionally, you cannot override the subnet setting using the auto-assign
    public IP feature if you specify an existing network interface for device
    index 0"; InstanceNetworkInterfaceSpecification.AssociatePublicIpAddress:
    "can only be assigned to a network interface for eth0, and can only be
    assigned to a new network interface, not an existing one"):
      - ModifyNetworkInterfaceAttribute AssociatePublicIpAddress=true on an ENI
        attached at device index 0 of a live instance gives it a new public IPv4
        address from Amazon's pool (unless an Elastic IP is associated, which
        stays the public address): DescribeInstances' PublicIpAddress and
        DescribeNetworkInterfaces' Association.PublicIp show it. false removes
        it (an Elastic IP stays). The setting may be made on any ENI, attached
        elsewhere or detached, and stays on the ENI: it applies whenever the ENI
        is eth0, so an instance launched later on the ENI (at device index 0)
        gets a new public IP. That it persists is our reading of "can be enabled
        for any network interface but will only apply to ... eth0"; AWS does not
        state it outright. The address itself is released when the instance
        terminates (eni-release).
      - RunInstances naming AssociatePublicIpAddress (any value) for an existing
        ENI: InvalidParameterCombination "The associatePublicIPAddress parameter
        cannot be specified for a network interface with an ID." (AWS's message,
        quoted in a public restore script); with more than one interface:
        InvalidParameterCombination "The associatePublicIPAddress parameter
        cannot be specified when launching with multiple network interfaces."
        (quoted in public bug reports, e.g. erlcloud/erlcloud#284, where false
        was refused too); on an interface other than device index 0: "The
        associatePublicIPAddress parameter can only be specified for the network
        interface with DeviceIndex 0." (Spot Fleet's event documentation; code
        assumed InvalidParameterCombination). Nothing is launched.

    moto 5.2.5: ignores AssociatePublicIpAddress in ModifyNetworkInterfaceAttribute,
    and at RunInstances ignores it for an existing ENI and applies it to a new
    primary interface whatever else the request holds.
    """

    def refuse(message: str) -> EC2ClientError:
        return ec2_error("InvalidParameterCombination", message)

    def check_launch(backend: Any, count: int, kwargs: dict[str, Any]) -> None:
        specs = nic_specs(kwargs)
        asking = [s for s in specs if s.get("AssociatePublicIpAddress") is not None]
        if not asking:
            return
        if any(s.get("NetworkInterfaceId") for s in asking):
            raise refuse(
                "The associatePublicIPAddress parameter cannot be specified for a network "
                "interface with an ID."
            )
        if len(specs) > 1:
            raise refuse(
                "The associatePublicIPAddress parameter cannot be specified when launching "
                "with multiple network interfaces."
            )
        if any(device_index(s) != 0 for s in asking):
            raise refuse(
                "The associatePublicIPAddress parameter can only be specified for the "
                "network interface with DeviceIndex 0."
            )

    def apply(backend: Any, eni: Any) -> None:
        """Give or take the ENI's public IP as its setting and position say."""
        if eips_on(backend, eni):
            return  # the Elastic IP is the public address
        wanted = eni.__dict__.get(_PUBLIC_IP_ATTR)
        live_eth0 = (
            eni.instance is not None
            and eni.instance.state != "terminated"
            and eni.device_index == 0
        )
        if wanted and live_eth0:
            if not eni.public_ip:
                eni.public_ip = random_public_ip()
        elif wanted is False:
            eni.public_ip = None

    def launch_follow_up(backend: Any, kwargs: dict[str, Any], reservation: Any) -> None:
        for instance in reservation.instances:
            eni = primary_eni(instance)
            if eni is not None and eni.__dict__.get(_PUBLIC_IP_ATTR):
                apply(backend, eni)

    original_modify = ElasticNetworkInterfaces.modify_network_interface_attribute

    def modify_network_interface_attribute(self: Any) -> Any:
        value = self._get_param("AssociatePublicIpAddress")
        if value is None:
            return original_modify(self)
        with EC2_LOCK:
            eni = self.ec2_backend.get_network_interface(self._get_param("NetworkInterfaceId"))
            answer = original_modify(self)
            eni.__dict__[_PUBLIC_IP_ATTR] = is_true(value)
            apply(self.ec2_backend, eni)
            return answer

    ElasticNetworkInterfaces.modify_network_interface_attribute = modify_network_interface_attribute
    _launch_checks.append(check_launch)
    _launch_follow_ups.append(launch_follow_up)


# --------------------------------------------------------------------------
# Patch: capacity-reservation
# --------------------------------------------------------------------------


def patch_capacity_reservation() -> None:
    """On-Demand Capacity Reservations, and a launch's CapacityReservationSpecification.

    AWS (EC2 API Reference, RunInstances CapacityReservationSpecification: "If
    you do not specify this parameter, the instance's Capacity Reservation
    preference defaults to open, which enables it to run in any open Capacity
    Reservation that has matching attributes"; CapacityReservationSpecification
    / ...Response; CreateCapacityReservation, DescribeCapacityReservations;
    "Error codes"):
      - DescribeInstances reports each instance's CapacityReservationSpecification
        (CapacityReservationPreference open | none | capacity-reservations-only,
        and the CapacityReservationTarget it was launched with) and, when it runs
        in one, its CapacityReservationId. Unspecified: preference `open`.
      - A target naming a reservation that does not exist:
        InvalidCapacityReservationId.NotFound. A target whose reservation has no
        instance left, is not active, or does not match the launch's instance type
        and Availability Zone: ReservationCapacityExceeded "The requested
        reservation does not have sufficient compatible and available capacity
        for this request." (AWS's message, hashicorp/terraform-provider-aws#35745).
      - An on-demand launch with preference `open` runs in an active reservation
        with InstanceMatchCriteria `open` and the same instance type and AZ, if one
        has an instance left; a targeted launch takes one of its target's.
        TerminateInstances gives the instance back.
      - A Spot launch (InstanceMarketOptions spot) with a target or with
        `capacity-reservations-only`: InvalidParameterCombination (code and message
        are ours: AWS documents that reservations are for On-Demand instances, we
        saw no response).
      - CreateCapacityReservation (InstanceType, InstancePlatform, AvailabilityZone,
        InstanceCount, InstanceMatchCriteria open | targeted, TagSpecifications)
        makes an `active` reservation at once; DescribeCapacityReservations lists
        them (by id: unknown ids fail with InvalidCapacityReservationId.NotFound);
        CancelCapacityReservation makes one `cancelled`. The platform is recorded,
        not matched (moto's AMIs report odd platforms). Nothing else (end dates,
        tenancy, fleets, resource groups, billing) is emulated.
    Nothing is launched when a check fails.

    moto 5.2.5: has no capacity reservations (the three actions are unknown) and
    drops CapacityReservationSpecification: DescribeInstances shows none.
    """
    pending = threading.local()

    def reservations(backend: Any) -> dict[str, dict[str, Any]]:
        return backend.__dict__.setdefault("_tether_capacity_reservations", {})

    def not_found(reservation_id: str) -> EC2ClientError:
        return ec2_error(
            "InvalidCapacityReservationId.NotFound",
            f"The capacity reservation ID '{reservation_id}' does not exist",
        )

    def exceeded() -> EC2ClientError:
        return ec2_error(
            "ReservationCapacityExceeded",
            "The requested reservation does not have sufficient compatible and available "
            "capacity for this request.",
        )

    def check_launch(backend: Any, count: int, kwargs: dict[str, Any]) -> None:
        spec = getattr(pending, "spec", None) or {}
        preference = spec.get("CapacityReservationPreference") or (
            None if spec.get("CapacityReservationTarget") else "open"
        )
        target = (spec.get("CapacityReservationTarget") or {}).get("CapacityReservationId")
        spot = str(kwargs.get("instance_market_options") or "").lower() == "spot"
        if spot and (target or preference == "capacity-reservations-only"):
            raise ec2_error(
                "InvalidParameterCombination",
                "Capacity Reservations are for On-Demand Instances: a Spot launch cannot "
                "target one.",
            )
        # The launch's AZ: Placement (eni-in-use sets it from an existing ENI), or its subnet's.
        zone = kwargs.get("placement")
        subnet_id = kwargs.get("subnet_id") or next(
            (s.get("SubnetId") for s in nic_specs(kwargs) if s.get("SubnetId")), None
        )
        if not zone and subnet_id:
            zone = backend.get_subnet(subnet_id).availability_zone

        def fits(reservation: dict[str, Any]) -> bool:
            return (
                reservation["State"] == "active"
                and reservation["AvailableInstanceCount"] >= count
                and reservation["InstanceType"] == kwargs.get("instance_type")
                and reservation["AvailabilityZone"] == zone
            )

        chosen = None
        if target:
            reservation = reservations(backend).get(target)
            if reservation is None:
                raise not_found(target)
            if not fits(reservation):
                raise exceeded()
            chosen = reservation
        elif preference == "open" and not spot:
            chosen = next(
                (
                    r
                    for r in reservations(backend).values()
                    if r["InstanceMatchCriteria"] == "open" and fits(r)
                ),
                None,
            )
        elif preference == "capacity-reservations-only":
            chosen = next((r for r in reservations(backend).values() if fits(r)), None)
            if chosen is None:
                raise exceeded()
        shown: dict[str, Any] = {"CapacityReservationPreference": preference} if preference else {}
        if target:
            shown["CapacityReservationTarget"] = {"CapacityReservationId": target}
        pending.shown = shown or {"CapacityReservationPreference": "open"}
        pending.chosen = chosen

    def launch_follow_up(backend: Any, kwargs: dict[str, Any], reservation: Any) -> None:
        chosen = getattr(pending, "chosen", None)
        for instance in reservation.instances:
            instance.capacity_reservation_specification = copy.deepcopy(
                getattr(pending, "shown", None) or {"CapacityReservationPreference": "open"}
            )
            if chosen is not None:
                instance.capacity_reservation_id = chosen["CapacityReservationId"]
                chosen["AvailableInstanceCount"] -= 1

    original_run = InstanceResponse.run_instances

    def run_instances(self: Any) -> Any:
        pending.spec = self._get_param("CapacityReservationSpecification") or {}
        pending.shown = pending.chosen = None
        try:
            return original_run(self)
        finally:
            pending.spec = pending.shown = pending.chosen = None

    original_terminate = Instance.terminate

    def terminate(self: Instance) -> Any:
        with EC2_LOCK:
            live = self.state != "terminated"
            answer = original_terminate(self)
            reservation_id = self.__dict__.get("capacity_reservation_id")
            if live and reservation_id:
                reservation = reservations(self.ec2_backend).get(reservation_id)
                if reservation is not None and reservation["State"] == "active":
                    reservation["AvailableInstanceCount"] += 1
            return answer

    def create_capacity_reservation(self: Any) -> Any:
        backend = self.ec2_backend
        count = self._get_int_param("InstanceCount", 0)
        zone = self._get_param("AvailabilityZone")
        for name, value in (
            ("InstanceType", self._get_param("InstanceType")),
            ("InstancePlatform", self._get_param("InstancePlatform")),
            ("AvailabilityZone", zone),
        ):
            if not value:
                raise ec2_error("MissingParameter", f"The request must contain the parameter {name}.")
        if count < 1:
            raise ec2_error(
                "InvalidParameterValue", f"Value ({count}) for parameter instanceCount is invalid."
            )
        self.error_on_dryrun()
        reservation_id = "cr-" + random.randbytes(9).hex()[:17]
        tags = [
            {"Key": k, "Value": v}
            for spec in self._get_param("TagSpecifications", [])
            for k, v in ((t.get("Key"), t.get("Value")) for t in spec.get("Tags", []))
        ]
        reservation = {
            "CapacityReservationId": reservation_id,
            "OwnerId": backend.account_id,
            "CapacityReservationArn": f"arn:aws:ec2:{backend.region_name}:{backend.account_id}:"
            f"capacity-reservation/{reservation_id}",
            "InstanceType": self._get_param("InstanceType"),
            "InstancePlatform": self._get_param("InstancePlatform"),
            "AvailabilityZone": zone,
            "Tenancy": self._get_param("Tenancy") or "default",
            "TotalInstanceCount": count,
            "AvailableInstanceCount": count,
            "EbsOptimized": is_true(self._get_param("EbsOptimized")),
            "EphemeralStorage": False,
            "State": "active",
            "EndDateType": self._get_param("EndDateType") or "unlimited",
            "InstanceMatchCriteria": self._get_param("InstanceMatchCriteria") or "open",
            "CreateDate": utcnow(),
            "Tags": tags,
        }
        with EC2_LOCK:
            reservations(backend)[reservation_id] = reservation
        return ActionResult({"CapacityReservation": reservation})

    def describe_capacity_reservations(self: Any) -> Any:
        backend = self.ec2_backend
        ids = self._get_param("CapacityReservationIds", [])
        known = reservations(backend)
        for reservation_id in ids:
            if reservation_id not in known:
                raise not_found(reservation_id)
        listed = [known[i] for i in ids] if ids else list(known.values())
        return ActionResult({"CapacityReservations": listed})

    def cancel_capacity_reservation(self: Any) -> Any:
        reservation_id = self._get_param("CapacityReservationId")
        with EC2_LOCK:
            reservation = reservations(self.ec2_backend).get(reservation_id)
            if reservation is None:
                raise not_found(reservation_id)
            reservation["State"] = "cancelled"
            reservation["AvailableInstanceCount"] = 0
        return ActionResult({"Return": True})

    InstanceResponse.run_instances = run_instances
    Instance.terminate = terminate
    EC2Response.create_capacity_reservation = create_capacity_reservation
    EC2Response.describe_capacity_reservations = describe_capacity_reservations
    EC2Response.cancel_capacity_reservation = cancel_capacity_reservation
    _launch_checks.append(check_launch)
    _launch_follow_ups.append(launch_follow_up)


# --------------------------------------------------------------------------
# Patch: launch-template
# --------------------------------------------------------------------------


def patch_launch_template() -> None:
    """Launch template versions: numbers that exist, and SourceVersion's data.

    AWS (EC2 API Reference, CreateLaunchTemplateVersion, SourceVersion: "The
    version of the launch template on which to base the new version.
    Snapshots applied to the block device mapping are ignored when creating a
    new version unless they are explicitly included"; EC2 User Guide, "Modify a
    launch template (manage launch template versions)": the new version takes
    the source version's parameters, and those you specify replace them;
    DescribeLaunchTemplateVersions, Versions: "$Latest", "$Default" or a version
    number; errors as AWS words them, quoted in public bug reports:
    InvalidLaunchTemplateId.VersionNotFound "Could not find the specified version
    1 for the launch template with ID lt-…" (eksctl-io/eksctl#7786),
    InvalidLaunchTemplateName.NotFoundException "The specified launch template,
    with template name …, does not exist." (getmoto/moto#5477)):
      - CreateLaunchTemplateVersion with SourceVersion: the new version's
        LaunchTemplateData is the source version's, each top-level parameter the
        request gives replacing the source's. An unknown SourceVersion:
        InvalidLaunchTemplateId.VersionNotFound, nothing created.
      - A version number that does not exist (0 and negative numbers included)
        in DescribeLaunchTemplateVersions or CreateLaunchTemplateVersion's
        SourceVersion: InvalidLaunchTemplateId.VersionNotFound (moto already
        checks ModifyLaunchTemplate's DefaultVersion). A version that is no number and
        no alias gets the same error (AWS's answer for it is not verified).

    moto 5.2.5: a new version from SourceVersion holds only the parameters the
    request gives (the source's others are lost); version 0 (or -1, ...) silently
    names the latest version (Python's negative indexing); a non-numeric version
    answers HTTP 500. What moto already did right: the stored LaunchTemplateData
    round-trips as given; $Default/$Latest/numbers by id and by name; unknown
    template id/name and too-high numbers give AWS's codes and messages.
    """
    original_get_version = LaunchTemplate.get_version
    original_create_version = LaunchTemplates.create_launch_template_version

    def get_version(self: LaunchTemplate, num: Any) -> Any:
        alias = str(num).lower()
        if alias in ("$latest", "$default"):
            return original_get_version(self, num)
        try:
            number = int(str(num))
        except ValueError:
            raise InvalidLaunchTemplateVersionNotFound(template_id=self.id, version=num) from None
        if number < 1 or number > len(self.versions):
            raise InvalidLaunchTemplateVersionNotFound(template_id=self.id, version=num)
        return self.versions[number - 1]

    def create_launch_template_version(self: Any) -> Any:
        source = self._get_param("SourceVersion")
        if source is None:
            return original_create_version(self)
        with EC2_LOCK:
            name = self._get_param("LaunchTemplateName")
            template_id = self._get_param("LaunchTemplateId")
            template = (
                self.ec2_backend.get_launch_template(template_id)
                if template_id
                else self.ec2_backend.get_launch_template_by_name(name)
            )
            base = copy.deepcopy(template.get_version(source).data)  # raises before creating
            answer = original_create_version(self)
            created = template.versions[-1]
            for key, value in base.items():
                created.data.setdefault(key, value)  # the same dict the answer holds
            return answer

    LaunchTemplate.get_version = get_version
    LaunchTemplates.create_launch_template_version = create_launch_template_version


# --------------------------------------------------------------------------
# Patch: source-dest
# --------------------------------------------------------------------------


def patch_source_dest() -> None:
    """An instance's SourceDestCheck is its primary network interface's.

    AWS (EC2 API Reference, NetworkInterface.SourceDestCheck and
    ModifyNetworkInterfaceAttribute SourceDestCheck; Instance.SourceDestCheck;
    ModifyInstanceAttribute SourceDestCheck): source/destination checking is an
    attribute of a network interface; the instance-level attribute is that of its
    primary interface (device index 0): DescribeInstances' SourceDestCheck shows
    the primary ENI's value, and ModifyInstanceAttribute SourceDestCheck writes
    through to it (as observed against AWS in hashicorp/terraform#14068 and
    hashicorp/terraform-provider-aws#49198: "ModifyInstanceAttribute, which
    writes straight through to the primary ENI", "Read populates it from the
    primary ENI"). On an instance with more than one interface,
    ModifyInstanceAttribute SourceDestCheck fails with InvalidInstanceID "There
    are multiple interfaces attached to instance 'i-…'. Please specify an
    interface ID for the operation instead." (AWS's message, quoted in
    aws/aws-cdk#13791 and bobtfish/AWSnycast#28).

    moto 5.2.5: keeps a separate instance attribute, always true at launch: an
    ENI launched with SourceDestCheck=false shows false on the ENI and true on
    the instance, and ModifyInstanceAttribute changes only the latter.
    """

    def get(self: Instance) -> bool:
        eni = self.__dict__.get("nics", {}).get(0)
        if eni is not None:
            return bool(eni.source_dest_check)
        return self.__dict__.get("_tether_source_dest_check", True)

    def set_(self: Instance, value: Any) -> None:
        nics = self.__dict__.get("nics") or {}
        if not nics:  # Instance.__init__ sets it before the NICs exist
            self.__dict__["_tether_source_dest_check"] = is_true(value)
            return
        if len(nics) > 1:
            raise ec2_error(
                "InvalidInstanceID",
                f"There are multiple interfaces attached to instance '{self.id}'. "
                "Please specify an interface ID for the operation instead.",
            )
        nics[min(nics)].source_dest_check = is_true(value)

    Instance.source_dest_check = property(get, set_)


# --------------------------------------------------------------------------
# Patch: volume-attach
# --------------------------------------------------------------------------

# The instance states AttachVolume accepts (EC2 API Reference, AttachVolume:
# "Attaches an Amazon EBS volume to a running or stopped instance").
ATTACHABLE_STATES = {"running", "stopped"}


def patch_volume_attach() -> None:
    """AttachVolume and DetachVolume check the volume's and the instance's state.

    AWS (EC2 API Reference, AttachVolume: "Attaches an Amazon EBS volume to a
    running or stopped instance"; VolumeId: "The volume and instance must be
    within the same Availability Zone"; "Error codes": VolumeInUse, IncorrectState,
    InvalidVolume.ZoneMismatch, InvalidParameterValue):

    - AttachVolume of a volume that is attached (`in-use`), to this instance or
      another: VolumeInUse "vol-… is already attached to an instance" (AWS's
      message, quoted in aws/aws-sdk-java#1623, kubernetes/kubernetes#45049);
    - to an instance that is not running or stopped (pending, stopping,
      shutting-down, terminated): IncorrectState "Instance 'i-…' is not
      'running'." (AWS's message for a pending instance, quoted in
      ansible-collections/amazon.aws#497; we give it for every such state);
    - of a volume in another Availability Zone: InvalidVolume.ZoneMismatch "The
      volume 'vol-…' is not in the same availability zone as instance 'i-…'"
      (quoted in linuxkit/linuxkit#2388, kubernetes-sigs/aws-ebs-csi-driver#52);
    - at a device name the instance already uses: InvalidParameterValue "Invalid
      value '/dev/sdf' for unixDevice. Attachment point /dev/sdf is already in
      use" (quoted in mantl/mantl#819, nanovms/ops#1189, rexray/rexray#425).
    A refused attachment changes nothing.

    DetachVolume of a volume that is not attached: IncorrectState "Volume 'vol-…'
    is in the 'available' state." (AWS's response body, quoted in
    kubernetes-sigs/aws-ebs-csi-driver#1801 and hashicorp/terraform#9023).
    InstanceId and Device are optional (EC2 API Reference, DetachVolume).

    moto 5.2.5: attached an `in-use` volume again (it moved to the new instance,
    the old one still listing it), attached to a terminated instance, across
    Availability Zones and at a device name in use (replacing that device's
    volume in the instance's mapping); DetachVolume of an available volume
    answered InvalidAttachment.NotFound, and without InstanceId HTTP 500.
    DeleteVolume of an attached volume already failed as AWS does (VolumeInUse
    "Volume vol-… is currently attached to i-…", as quoted in NixOS/nixops-aws#104).
    The checks are on the API actions only: the volumes RunInstances attaches
    go through moto as before.
    """
    original_attach = ElasticBlockStore.attach_volume

    def attach_volume(self: Any) -> Any:
        with EC2_LOCK:
            backend = self.ec2_backend
            volume = backend.get_volume(self._get_param("VolumeId"))
            instance = backend.get_instance(self._get_param("InstanceId"))
            device = self._get_param("Device")
            if volume.attachment is not None:
                raise ec2_error("VolumeInUse", f"{volume.id} is already attached to an instance")
            if instance.state not in ATTACHABLE_STATES:
                raise ec2_error("IncorrectState", f"Instance '{instance.id}' is not 'running'.")
            if volume.availability_zone != instance.availability_zone:
                raise ec2_error(
                    "InvalidVolume.ZoneMismatch",
                    f"The volume '{volume.id}' is not in the same availability zone as "
                    f"instance '{instance.id}'",
                )
            if device in instance.block_device_mapping:
                raise ec2_error(
                    "InvalidParameterValue",
                    f"Invalid value '{device}' for unixDevice. Attachment point {device} is already in use",
                )
            return original_attach(self)

    def detach_volume(self: Any) -> Any:
        with EC2_LOCK:
            backend = self.ec2_backend
            volume = backend.get_volume(self._get_param("VolumeId"))
            instance_id = self._get_param("InstanceId")
            if instance_id:
                backend.get_instance(instance_id)  # InvalidInstanceID.NotFound
            attachment = volume.attachment
            if attachment is None:
                raise ec2_error("IncorrectState", f"Volume '{volume.id}' is in the 'available' state.")
            if instance_id and instance_id != attachment.instance.id:
                raise InvalidVolumeAttachmentError(volume.id, instance_id)
            device = self._get_param("Device")
            if device and device != attachment.device:
                raise InvalidVolumeDetachmentError(volume.id, attachment.instance.id, device)
            self.error_on_dryrun()
            detached = backend.detach_volume(volume.id, attachment.instance.id, attachment.device)
            return ActionResult(
                {
                    "VolumeId": detached.volume.id,
                    "InstanceId": detached.instance.id,
                    "Device": detached.device,
                    "State": "detaching",
                    "AttachTime": detached.attach_time,
                }
            )

    ElasticBlockStore.attach_volume = attach_volume
    ElasticBlockStore.detach_volume = detach_volume


# --------------------------------------------------------------------------
# Patch: volume-termination
# --------------------------------------------------------------------------


def patch_volume_termination() -> None:
    """A volume RunInstances attaches is deleted on termination unless it says otherwise.

    AWS (EC2 User Guide, "Preserve data when an instance is terminated", table
    "Default deletion behavior for EBS volumes": a root volume attached at launch
    is deleted; a data volume attached at launch through the CLI/API is deleted;
    any volume attached after launch is preserved. EbsBlockDevice /
    VolumeAttachment DeleteOnTermination; ModifyInstanceAttribute
    BlockDeviceMappings): TerminateInstances deletes each attached volume whose
    DeleteOnTermination is true and leaves the others `available`, with no
    attachment. RunInstances' BlockDeviceMappings without DeleteOnTermination
    default it to true; AttachVolume's attachments to false. DescribeVolumes
    shows each attachment's DeleteOnTermination.

    moto 5.2.5: already deleted or released the volumes by their flag on
    termination (and the 8 GiB root volume it makes for a launch without
    BlockDeviceMappings has it true; AttachVolume false;
    ModifyInstanceAttribute changes it), but defaulted a launch mapping without
    DeleteOnTermination to false, so such volumes (a root volume too) outlived
    their instance; DescribeVolumes' attachments had no DeleteOnTermination.
    Termination itself is moto's (eni-release wraps Instance.terminate, which
    still calls moto's, which releases the volumes), so this patch only fixes the
    default and what DescribeVolumes shows.
    """
    original_parse = InstanceResponse._parse_block_device_mapping

    def parse(self: Any) -> list[dict[str, Any]]:
        mappings = original_parse(self)
        given = self._get_param("BlockDeviceMappings", [])
        for mapping, request in zip(mappings, given):
            flag = (request.get("Ebs") or {}).get("DeleteOnTermination")
            mapping["Ebs"]["DeleteOnTermination"] = True if flag is None else is_true(flag)
        return mappings

    InstanceResponse._parse_block_device_mapping = parse

    def attachment_delete_on_termination(self: VolumeAttachment) -> bool:
        block = self.instance.block_device_mapping.get(self.device)
        return bool(block is not None and block.volume_id == self.volume.id and block.delete_on_termination)

    VolumeAttachment.delete_on_termination = property(attachment_delete_on_termination)


# --------------------------------------------------------------------------
# Patch: instance-status
# --------------------------------------------------------------------------

# The emulator's test hook (not an AWS behaviour): an instance tagged
# tether-emulator:status=instance-impaired fails its instance status check,
# =system-impaired its system status check, for as long as the tag is there.
STATUS_TAG = "tether-emulator:status"
# With it, tether-emulator:impaired-since (ISO 8601) says since when the check has failed
# (a test cannot wait minutes for it to have failed long enough); absent: since first asked.
IMPAIRED_SINCE_TAG = "tether-emulator:impaired-since"
STATUS_CHECKS = ("instance", "system")


def patch_instance_status() -> None:
    """DescribeInstanceStatus as AWS answers it, and a way to impair an instance.

    AWS (EC2 API Reference, DescribeInstanceStatus; InstanceStatusSummary,
    InstanceStatusDetails): by default only running instances are described,
    all of them with IncludeAllInstances=true. A running instance's
    InstanceStatus and SystemStatus are `ok` with reachability `passed`, or
    `impaired` with reachability `failed` and ImpairedSince; an instance that
    is not running has `not-applicable` for both. Filters (AND between names,
    OR between values): instance-status.status and system-status.status (ok |
    impaired | initializing | insufficient-data | not-applicable),
    instance-status.reachability and system-status.reachability (passed | failed
    | initializing | insufficient-data), instance-state-name,
    instance-state-code, availability-zone, availability-zone-id, event.* (the
    emulator schedules no events, so these match nothing). MaxResults "can be
    between 5 and 1000" (older API Reference wording) and "You cannot specify
    this parameter and the instance IDs parameter in the same request":
    InvalidParameterCombination "The parameter instancesSet cannot be used with
    the parameter maxResults" (AWS's message for DescribeInstances; moto uses it
    there) and InvalidParameterValue "Value ( 3 ) for parameter maxResults is
    invalid. Expecting a value greater than 5." (AWS's message, quoted in
    aws/aws-sdk-ruby#2575; its "less than 1000" form for a larger value is our
    inference). NextToken pages on; an unknown token: InvalidPaginationToken.
    An unknown filter name: InvalidParameterValue "The filter '…' is invalid".

    The emulator's one test hook: the instance tag tether-emulator:status with
    value instance-impaired (or system-impaired) makes that check `impaired`
    while the instance runs (since the time in tether-emulator:impaired-since,
    if given, else since it was first described). AWS has no such switch; tests set it with CreateTags
    to simulate a failed status check.

    moto 5.2.5: running-only unless IncludeAllInstances, and `ok`/`not-applicable`
    as above, but nothing could ever be impaired; of the filters it applied only
    instance-state-name and instance-state-code and ignored the others (so
    instance-status.status=impaired returned every running instance); MaxResults
    and NextToken were ignored (everything in one page, no NextToken), also
    together with InstanceIds.
    """

    def impaired_since(instance: Instance, check: str) -> Any:
        """When `check` failed (first reported impaired), or None if it passes."""
        tags = instance.ec2_backend.tags.get(instance.id) or {}
        failed = tags.get(STATUS_TAG) == f"{check}-impaired"
        since: dict[str, Any] = instance.__dict__.setdefault("_tether_impaired_since", {})
        if not failed:
            since.pop(check, None)
            return None
        if tags.get(IMPAIRED_SINCE_TAG):
            from datetime import datetime

            return datetime.fromisoformat(tags[IMPAIRED_SINCE_TAG].replace("Z", "+00:00")).replace(tzinfo=None)
        return since.setdefault(check, utcnow())

    def status_summary(instance: Instance, check: str) -> dict[str, Any]:
        if instance.state != "running":
            return {"Status": "not-applicable"}
        since = impaired_since(instance, check)
        if since is None:
            return {"Status": "ok", "Details": [{"Name": "reachability", "Status": "passed"}]}
        return {
            "Status": "impaired",
            "Details": [{"Name": "reachability", "Status": "failed", "ImpairedSince": since}],
        }

    Instance.instance_status = property(lambda self: status_summary(self, "instance"))
    Instance.system_status = property(lambda self: status_summary(self, "system"))

    def zone_id(instance: Instance) -> str | None:
        zone = instance.ec2_backend.get_zone_by_name(instance.availability_zone)
        return zone.zone_id if zone else None

    def reachability(summary: dict[str, Any]) -> str | None:
        details = summary.get("Details") or []
        return details[0]["Status"] if details else None

    filters_by_name: dict[str, Callable[[Instance], list[str]]] = {
        "availability-zone": lambda i: [i.availability_zone],
        "availability-zone-id": lambda i: [zone_id(i)],
        "instance-state-name": lambda i: [i.state],
        "instance-state-code": lambda i: [str(i.state_code)],
        "instance-status.status": lambda i: [i.instance_status["Status"]],
        "instance-status.reachability": lambda i: [reachability(i.instance_status)],
        "system-status.status": lambda i: [i.system_status["Status"]],
        "system-status.reachability": lambda i: [reachability(i.system_status)],
    }
    # Documented filters on scheduled events: the emulator schedules none.
    event_filters = {
        "event.code",
        "event.description",
        "event.instance-event-id",
        "event.not-after",
        "event.not-before",
        "event.not-before-deadline",
    }
    # Documented, not emulated: accepted and ignored (see README).
    ignored_filters = {
        "operator.managed",
        "operator.principal",
        "attached-ebs-status.status",
        "application-status.status",
    }

    def matches(instance: Instance, filters: dict[str, list[str]]) -> bool:
        for name, values in filters.items():
            if name in ignored_filters:
                continue
            if name in event_filters:
                return False
            if not set(filters_by_name[name](instance)) & set(values):
                return False
        return True

    def describe_instance_status(self: Any) -> Any:
        instance_ids = self._get_param("InstanceIds", [])
        max_results = self._get_param("MaxResults")
        token = self._get_param("NextToken")
        include_all = self._get_bool_param("IncludeAllInstances", False)
        filters = self._filters_from_querystring()
        for name in filters:
            if name not in filters_by_name and name not in event_filters and name not in ignored_filters:
                raise ec2_error("InvalidParameterValue", f"The filter '{name}' is invalid")
        if max_results is not None:
            if instance_ids:
                raise ec2_error(
                    "InvalidParameterCombination",
                    "The parameter instancesSet cannot be used with the parameter maxResults",
                )
            max_results = int(max_results)
            if max_results < 5:
                raise ec2_error(
                    "InvalidParameterValue",
                    f"Value ( {max_results} ) for parameter maxResults is invalid. "
                    "Expecting a value greater than 5.",
                )
            if max_results > 1000:
                raise ec2_error(
                    "InvalidParameterValue",
                    f"Value ( {max_results} ) for parameter maxResults is invalid. "
                    "Expecting a value less than 1000.",
                )
        self.error_on_dryrun()
        with EC2_LOCK:
            backend = self.ec2_backend
            # Every instance moto knows, in launch order; terminated ones stay,
            # so a token (the last id of a page) always keeps its place.
            everyone = backend.all_instances()
            start = 0
            if token:
                ids = [instance.id for instance in everyone]
                if token not in ids:
                    raise ec2_error(
                        "InvalidPaginationToken",
                        "The specified pagination token is not valid or is expired.",
                    )
                start = ids.index(token) + 1
            if instance_ids:
                chosen = backend.get_multi_instances_by_id(instance_ids)  # NotFound for unknown ids
            else:
                chosen = everyone[start:]
            statuses = [
                instance
                for instance in chosen
                if (include_all or instance.state == "running") and matches(instance, filters)
            ]
            next_token = None
            if max_results is not None and len(statuses) > max_results:
                statuses = statuses[:max_results]
                next_token = statuses[-1].id
        return ActionResult({"InstanceStatuses": statuses, "NextToken": next_token})

    InstanceResponse.describe_instance_status = describe_instance_status


# --------------------------------------------------------------------------
# Wiring
# --------------------------------------------------------------------------

PATCHES: dict[str, Callable[[], None]] = {
    # Order matters only for RunInstances checks: the AZ check sees the
    # caller's Placement before eni-in-use fills it in from the ENI.
    # Request-shape checks first, as AWS validates parameters before resources.
    "nic-sg": patch_nic_sg,
    "device-index": patch_device_index,
    "eni-az": patch_eni_az,
    "eni-in-use": patch_eni_in_use,
    "eni-delete": patch_eni_delete,
    "private-ip": patch_private_ip,
    "cidr-reservation": patch_cidr_reservation,
    "eni-release": patch_eni_release,
    "client-token": patch_client_token,
    "capacity": patch_capacity,
    "volume-settings": patch_volume_settings,
    "secondary-ip": patch_secondary_ip,
    "ipv6": patch_ipv6,
    "public-ip": patch_public_ip,
    "capacity-reservation": patch_capacity_reservation,
    "launch-template": patch_launch_template,
    "source-dest": patch_source_dest,
    "volume-attach": patch_volume_attach,
    "volume-termination": patch_volume_termination,
    "instance-status": patch_instance_status,
}
assert set(PATCHES) == set(PATCH_NAMES)


def disabled_patches(environ: dict[str, str]) -> set[str]:
    names = {n.strip() for n in environ.get("TETHER_MOTO_DISABLE", "").split(",") if n.strip()}
    unknown = names - set(PATCH_NAMES)
    if unknown:
        sys.exit(
            f"tether_moto: unknown patch name(s) in TETHER_MOTO_DISABLE: {sorted(unknown)}; "
            f"known: {', '.join(PATCH_NAMES)}"
        )
    return names


def apply_patches(disabled: set[str]) -> list[str]:
    _install_hook_points()
    active = []
    for name, apply in PATCHES.items():
        if name not in disabled:
            apply()
            active.append(name)
    return active


def exit_when_orphaned(watch_stdin: bool) -> None:
    """Exit at once on SIGTERM/SIGINT and, unless told not to, at stdin EOF."""

    def die(*_: Any) -> None:
        os._exit(0)

    signal.signal(signal.SIGTERM, die)
    signal.signal(signal.SIGINT, die)
    if not watch_stdin:
        return

    def watch() -> None:
        try:
            while sys.stdin.buffer.read1(65536):
                pass
        finally:
            os._exit(0)

    threading.Thread(target=watch, name="stdin-eof-watch", daemon=True).start()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--port", type=int, default=0, help="TCP port on 127.0.0.1 (0: any free port)"
    )
    parser.add_argument("--ignore-stdin", action="store_true", help="do not exit when stdin closes")
    parser.add_argument("--verbose", action="store_true", help="log every HTTP request to stderr")
    args = parser.parse_args()

    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="tether_moto: %(message)s")
    logging.getLogger("werkzeug").setLevel(logging.INFO if args.verbose else logging.WARNING)

    if moto.__version__ != PINNED_MOTO_VERSION:
        sys.exit(
            f"tether_moto: moto {moto.__version__} installed, patches are written for "
            f"{PINNED_MOTO_VERSION}; install tests/emulator/requirements.txt"
        )

    disabled = disabled_patches(dict(os.environ))
    exit_when_orphaned(watch_stdin=not args.ignore_stdin)
    active = apply_patches(disabled)
    log.info("moto %s; patches active: %s", moto.__version__, ", ".join(active) or "none")
    if disabled:
        log.info("patches disabled by TETHER_MOTO_DISABLE: %s", ", ".join(sorted(disabled)))

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=args.port, verbose=False)
    server.start()
    _, port = server.get_host_and_port()
    sys.stdout.write(f"TETHER_MOTO_READY port={port}\n")
    sys.stdout.flush()
    while True:
        signal.pause()


if __name__ == "__main__":
    main()
