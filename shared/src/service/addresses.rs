//! Address reservations: every chosen private IP and Elastic IP is reserved in the table,
//! in the same transaction as the node or group that claims it, and released with it; a
//! reserved private IP is also kept from EC2's random picks by a subnet CIDR reservation.

use std::collections::BTreeSet;

use tracing::{info, warn};

use super::{Tether, TetherError};
use crate::error::ErrorClass;
use crate::model::{Node, NodeState};
use crate::ports::{Address, Expect, Reservation, SubnetReservation, Write, SUBNET_RESERVATION_GRACE};

/// The addresses a node claims: its chosen private IP (in its subnet) and the user's Elastic
/// IP, its named secondary IPs, and its extra ENIs' chosen IPs (in their subnets) and Elastic
/// IPs. A group member's pool address and pool Elastic IP are its group's (handed to it).
pub(crate) fn chosen_addresses(node: &Node) -> Vec<Address> {
    claimed_fields(node).into_iter().map(|(address, _)| address).collect()
}

/// `chosen_addresses`, each with the request field that chose it (named in a conflict).
pub(crate) fn claimed_fields(node: &Node) -> Vec<(Address, String)> {
    let spec = &node.spec;
    let private = |subnet_id: &str, ip| Address::PrivateIp { subnet_id: subnet_id.to_owned(), ip };
    let mut addresses = Vec::new();
    if let Some(ip) = node.persistence.private_ip {
        addresses.push((private(&spec.subnet_id, ip), "persistence.private_ip".to_owned()));
    }
    if let Some(allocation_id) = &node.persistence.elastic_ip_allocation_id {
        addresses.push((Address::ElasticIp { allocation_id: allocation_id.clone() }, "persistence.elastic_ip_allocation_id".to_owned()));
    }
    for ip in spec.secondary_private_ips.iter().flat_map(|s| &s.addresses) {
        addresses.push((private(&spec.subnet_id, *ip), "spec.secondary_private_ips.addresses".to_owned()));
    }
    for (i, extra) in spec.extra_enis.iter().enumerate() {
        if let Some(ip) = extra.private_ip {
            addresses.push((private(&extra.subnet_id, ip), format!("spec.extra_enis[{i}].private_ip")));
        }
        if let Some(allocation_id) = &extra.elastic_ip_allocation_id {
            addresses.push((Address::ElasticIp { allocation_id: allocation_id.clone() }, format!("spec.extra_enis[{i}].elastic_ip_allocation_id")));
        }
    }
    addresses
}

/// The words for an address another record holds, naming it and how to free it.
pub(crate) fn taken(address: &Address, by: &Reservation) -> String {
    format!("{address} is reserved by {}; choose another, or deallocate its holder first", by.holder())
}

impl Tether {
    /// The reservation of `address`, refused (naming `field`) if another record than
    /// `mine` holds it.
    pub(super) async fn unreserved(&self, address: &Address, field: &str, mine: &str) -> Result<Option<Reservation>, TetherError> {
        match self.registry.reservation(address).await? {
            Some(r) if r.owner != mine => Err(TetherError::invalid(field, taken(address, &r))),
            found => Ok(found),
        }
    }

    /// After a conflict writing reservations: which of `addresses` someone else holds now,
    /// as the error naming `field`; `None` if none (the conflict was elsewhere).
    pub(super) async fn reservation_conflict(&self, addresses: &[(Address, &str)], mine: &str) -> Result<Option<TetherError>, TetherError> {
        for (address, field) in addresses {
            if let Err(e) = self.unreserved(address, field, mine).await {
                return Ok(Some(e));
            }
        }
        Ok(None)
    }

    /// Keeps EC2 from handing a reserved private IP to an ENI that does not ask for it, and
    /// records the subnet CIDR reservation on the address's reservation. Best effort: what
    /// fails here, the reconciler's sweep does later.
    pub(super) async fn reserve_in_subnet(&self, reservation: &Reservation) {
        let Address::PrivateIp { subnet_id, ip } = &reservation.address else { return };
        if reservation.subnet_reservation.is_some() {
            return;
        }
        let made = match self.network.reserve_in_subnet(subnet_id, *ip, &reservation.owner, self.clock.now()).await {
            Ok(made) => made,
            Err(e) => {
                warn!(address = %reservation.address, error = %e, "subnet CIDR reservation not made; the reconciler tries again");
                return;
            }
        };
        let recorded = Reservation { subnet_reservation: Some(made.clone()), ..reservation.clone() };
        let expect = Expect::of(Some(reservation));
        match self.registry.write(vec![Write::PutReservation { reservation: recorded, expect }]).await {
            Ok(()) => info!(address = %reservation.address, subnet_reservation = made.id, tethers = made.tethers, "kept from EC2's random picks"),
            Err(e) => {
                warn!(address = %reservation.address, error = %e, "subnet CIDR reservation not recorded");
                // Released meanwhile: the one made is undone. Handed on (or recorded by another
                // request) it still keeps the address: the sweep records it. (It may be another
                // request's, found covering the address: undoing it then would leave that
                // request's record naming nothing.)
                if made.tethers && matches!(self.registry.reservation(&reservation.address).await, Ok(None)) {
                    if let Err(e) = self.network.unreserve_in_subnet(&made.id).await {
                        warn!(subnet_reservation = made.id, error = %e, "unrecorded subnet CIDR reservation left for the sweep");
                    }
                }
            }
        }
    }

    /// Keeps a private IP about to be claimed from EC2's random picks before it is checked
    /// free: an ENI made between that check and a reservation made after the claim is
    /// written could take it. `None` when EC2 refused (the claim is then reserved in the
    /// subnet once written, or by the sweep). If the claim is never written, the sweep
    /// deletes what is made here.
    pub(super) async fn reserve_ahead(&self, address: &Address, owner: &str) -> Option<SubnetReservation> {
        let Address::PrivateIp { subnet_id, ip } = address else { return None };
        match self.network.reserve_in_subnet(subnet_id, *ip, owner, self.clock.now()).await {
            Ok(made) => Some(made),
            Err(e) => {
                warn!(%address, error = %e, "subnet CIDR reservation not made ahead of the claim");
                None
            }
        }
    }

    /// Undoes `reserve_ahead` for claims refused (best effort: the sweep deletes what is
    /// left). One whose address the table reserves now is left alone: it may be another
    /// request's, found covering the address, and that request's claim was written.
    pub(super) async fn undo_ahead(&self, claims: &[Reservation]) {
        for claim in claims {
            let Some(made) = claim.subnet_reservation.as_ref().filter(|m| m.tethers) else { continue };
            if !matches!(self.registry.reservation(&claim.address).await, Ok(None)) {
                continue;
            }
            if let Err(e) = self.network.unreserve_in_subnet(&made.id).await {
                warn!(subnet_reservation = made.id, error = %e, "subnet CIDR reservation of a refused claim left for the sweep");
            }
        }
    }

    /// Before an ENI takes the node's chosen private IP: the address must be reserved for the
    /// node (or its group). One reserved for nobody is claimed for it now: a pool address
    /// leaves its pool (and its reservation is released) when its member never ran, but a
    /// resume planned or asked before that may still launch the member. `Err(reason)`: the
    /// address is someone else's.
    pub(super) async fn claim_before_launch(&self, node: &Node) -> Result<Result<(), String>, TetherError> {
        let Some(ip) = node.persistence.private_ip else { return Ok(Ok(())) };
        let address = Address::PrivateIp { subnet_id: node.spec.subnet_id.clone(), ip };
        match self.registry.reservation(&address).await? {
            Some(r) if r.owner == node.id.as_str() || node.group.as_ref().is_some_and(|m| r.owner == m.group_id.as_str()) => Ok(Ok(())),
            Some(r) => Ok(Err(taken(&address, &r))),
            None => {
                let claimed = Reservation::new(address, node.id.as_str());
                // Only for the node as read (a launch that lost a race must not claim for a node
                // deallocated since). A conflict re-reads the node and tries again.
                let check = Write::CheckNode { id: node.id.clone(), version: node.version };
                self.registry.write(vec![check, Write::PutReservation { reservation: claimed.clone(), expect: Expect::Absent }]).await?;
                info!(address = %claimed.address, "address reserved for the node at its first launch");
                self.reserve_in_subnet(&claimed).await;
                Ok(Ok(()))
            }
        }
    }

    /// Saves `next` (a PATCH of `node`) with the reservations of the addresses it names that
    /// `node` did not (named secondary IPs), and without those it no longer names, in one
    /// transaction; the subnet CIDR reservations follow once it is written.
    pub(super) async fn save_claiming(&self, node: &Node, next: &Node) -> Result<Node, crate::error::AwsError> {
        let (before, after) = (chosen_addresses(node), chosen_addresses(next));
        let added: Vec<Address> = after.iter().filter(|a| !before.contains(a)).cloned().collect();
        let mut released = Vec::new();
        for address in before.iter().filter(|a| !after.contains(a)) {
            released.extend(self.registry.reservation(address).await?.filter(|r| r.owner == node.id.as_str()));
        }
        if added.is_empty() && released.is_empty() {
            return self.store.save(next).await;
        }
        let claims: Vec<Reservation> = added.into_iter().map(|a| Reservation::new(a, node.id.as_str())).collect();
        let mut writes = vec![Write::SaveNode(next.clone())];
        writes.extend(claims.iter().map(|r| Write::PutReservation { reservation: r.clone(), expect: Expect::Absent }));
        writes.extend(released.iter().map(release_write));
        self.registry.write(writes).await?;
        for claim in &claims {
            self.reserve_in_subnet(claim).await;
        }
        self.unreserve_released(&released).await;
        Ok(Node { version: next.version + 1, ..next.clone() })
    }

    /// The writes that release a node's reservations as it is deallocated: its own are
    /// deleted, a pool Elastic IP handed to it goes back to its group. Reservations of others
    /// are left alone. Also returns the reservations deleted: once the writes are done, their
    /// subnet CIDR reservations go too (`unreserve_released`).
    pub(super) async fn releases(&self, node: &Node) -> Result<(Vec<Write>, Vec<Reservation>), TetherError> {
        let mut writes = Vec::new();
        let mut released = Vec::new();
        for address in chosen_addresses(node) {
            let Some(r) = self.registry.reservation(&address).await? else { continue };
            let expect = Expect::of(Some(&r));
            if r.owner == node.id.as_str() {
                writes.push(release_write(&r));
                released.push(r);
            } else if r.member.as_ref() == Some(&node.id) {
                writes.push(Write::PutReservation { reservation: Reservation { member: None, ..r }, expect });
            }
        }
        Ok((writes, released))
    }

    /// After the write that deleted them: the subnet CIDR reservations Tether made for
    /// `released`. Only then: deleted before, a write that then fails (or a request that dies)
    /// would leave a reserved address that EC2 may hand to any ENI, its record naming a
    /// subnet CIDR reservation that no longer exists. Best effort: what is left, the sweep
    /// deletes.
    pub(super) async fn unreserve_released(&self, released: &[Reservation]) {
        for r in released {
            if let Some(made) = r.subnet_reservation.as_ref().filter(|s| s.tethers) {
                if let Err(e) = self.network.unreserve_in_subnet(&made.id).await {
                    warn!(address = %r.address, subnet_reservation = made.id, error = %e, "released address's subnet CIDR reservation left for the sweep");
                }
            }
        }
    }

    /// A node created before reservations existed gets them now (the reconciler's backfill).
    /// An address another record holds already is named in the node's history instead.
    pub(super) async fn backfill_reservations(&self, node: &Node) -> Result<Option<String>, TetherError> {
        if node.addresses_reserved || node.state == NodeState::Deallocated {
            return Ok(None);
        }
        let mut next = node.clone();
        next.addresses_reserved = true;
        let mut writes = Vec::new();
        let mut claimed = Vec::new();
        for address in chosen_addresses(node) {
            match self.registry.reservation(&address).await? {
                None => {
                    claimed.push(address.to_string());
                    writes.push(Write::PutReservation { reservation: Reservation::new(address, node.id.as_str()), expect: Expect::Absent });
                }
                Some(r) if r.owner == node.id.as_str() => {}
                Some(r) => next.record(self.clock.now(), format!("{} also claimed by this node; not reserved for it", taken(&address, &r))),
            }
        }
        writes.insert(0, Write::SaveNode(next));
        match self.registry.write(writes).await {
            Err(e) if e.class == ErrorClass::Conflict => return Ok(None),
            other => other?,
        }
        for address in chosen_addresses(node) {
            if let Some(r) = self.registry.reservation(&address).await?.filter(|r| r.owner == node.id.as_str()) {
                self.reserve_in_subnet(&r).await;
            }
        }
        Ok(Some(format!("addresses reserved: {}", if claimed.is_empty() { "none to claim".to_owned() } else { claimed.join(", ") })))
    }

    /// The sweep's part for reservations: in `subnets`, EC2's subnet CIDR reservations are
    /// made to agree with `reservations` (the table's, as read; any it names no longer is
    /// skipped by a failed condition, and what looks left over is read again first). Every
    /// reserved private IP gets one, recorded on its reservation (one a request could not
    /// make or record, or whose recorded one is gone); one of Tether's that no reservation
    /// names (made ahead of a claim never written, by a request that died before recording
    /// it, or left by one that died after releasing its address) is deleted.
    pub(super) async fn sweep_reservations(&self, reservations: &[Reservation], subnets: &BTreeSet<String>) -> Result<Vec<String>, TetherError> {
        let mut done = Vec::new();
        for subnet in subnets.iter().cloned() {
            let in_ec2 = self.network.subnet_reservations(&subnet).await?;
            for r in reservations {
                let Address::PrivateIp { subnet_id, ip } = &r.address else { continue };
                if *subnet_id != subnet {
                    continue;
                }
                let covering = in_ec2.iter().find(|c| c.cidr.contains(ip));
                let recorded = r.subnet_reservation.as_ref().map(|s| s.id.as_str());
                match covering {
                    Some(c) if recorded == Some(c.id.as_str()) => {}
                    Some(c) => {
                        let made = SubnetReservation { id: c.id.clone(), tethers: c.tethers };
                        let write = Write::PutReservation { reservation: Reservation { subnet_reservation: Some(made), ..r.clone() }, expect: Expect::of(Some(r)) };
                        if self.registry.write(vec![write]).await.is_ok() {
                            done.push(format!("{}: subnet CIDR reservation {} recorded for {}", r.owner, c.id, r.address));
                        }
                    }
                    None => {
                        self.reserve_in_subnet(&Reservation { subnet_reservation: None, ..r.clone() }).await;
                        done.push(format!("{}: subnet CIDR reservation for {}", r.owner, r.address));
                    }
                }
            }
            for c in in_ec2.iter().filter(|c| c.tethers && c.cidr.prefix_len() == 32) {
                let address = Address::PrivateIp { subnet_id: subnet.clone(), ip: c.cidr.addr() };
                let named = reservations.iter().any(|r| r.address == address);
                // Made a moment ago, ahead of a claim not written yet: its request may still
                // write it (and until then EC2 must not hand the address out).
                let young = c.made_at.is_some_and(|at| (self.clock.now() - at).to_std().unwrap_or_default() < SUBNET_RESERVATION_GRACE);
                // Read again: the address may have been reserved since the scan.
                if named || young || self.registry.reservation(&address).await?.is_some() {
                    continue;
                }
                self.network.unreserve_in_subnet(&c.id).await?;
                warn!(subnet_reservation = c.id, %address, "subnet CIDR reservation of Tether's that no reservation names; deleted");
                done.push(format!("deleted subnet CIDR reservation {} left for {address}", c.id));
            }
        }
        Ok(done)
    }

    /// The subnets of `reservations`' private IPs.
    pub(super) fn reserved_subnets(reservations: &[Reservation]) -> BTreeSet<String> {
        reservations
            .iter()
            .filter_map(|r| match &r.address {
                Address::PrivateIp { subnet_id, .. } => Some(subnet_id.clone()),
                Address::ElasticIp { .. } => None,
            })
            .collect()
    }
}

/// The write that deletes a reservation, as read.
pub(super) fn release_write(reservation: &Reservation) -> Write {
    Write::DeleteReservation { address: reservation.address.clone(), expect: Expect::of(Some(reservation)) }
}
