//! Address reservations: every chosen private IP and Elastic IP is reserved in the table,
//! in the same transaction as the node or group that claims it, and released with it; a
//! reserved private IP is also kept from EC2's random picks by a subnet CIDR reservation.

use tracing::{info, warn};

use super::{Tether, TetherError};
use crate::error::ErrorClass;
use crate::model::{Node, NodeState};
use crate::ports::{Address, Expect, Reservation, Write};

/// The addresses a node claims: its chosen private IP (in its subnet) and the user's Elastic
/// IP. A group member's pool address and pool Elastic IP are its group's (handed to it).
pub(crate) fn chosen_addresses(node: &Node) -> Vec<Address> {
    let mut addresses = Vec::new();
    if let Some(ip) = node.persistence.private_ip {
        addresses.push(Address::PrivateIp { subnet_id: node.spec.subnet_id.clone(), ip });
    }
    if let Some(allocation_id) = &node.persistence.elastic_ip_allocation_id {
        addresses.push(Address::ElasticIp { allocation_id: allocation_id.clone() });
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
        let made = match self.network.reserve_in_subnet(subnet_id, *ip, &reservation.owner).await {
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
                // The reservation changed meanwhile (released, handed on): the one made is undone.
                warn!(address = %reservation.address, error = %e, "subnet CIDR reservation not recorded");
                if made.tethers {
                    if let Err(e) = self.network.unreserve_in_subnet(&made.id).await {
                        warn!(subnet_reservation = made.id, error = %e, "unrecorded subnet CIDR reservation left behind");
                    }
                }
            }
        }
    }

    /// The writes that release a node's reservations as it is deallocated: its own are
    /// deleted (with the subnet CIDR reservations Tether made), a pool Elastic IP handed to
    /// it goes back to its group. Reservations of others are left alone.
    pub(super) async fn releases(&self, node: &Node) -> Result<Vec<Write>, TetherError> {
        let mut writes = Vec::new();
        for address in chosen_addresses(node) {
            let Some(r) = self.registry.reservation(&address).await? else { continue };
            let expect = Expect::of(Some(&r));
            if r.owner == node.id.as_str() {
                if let Some(made) = r.subnet_reservation.as_ref().filter(|s| s.tethers) {
                    self.network.unreserve_in_subnet(&made.id).await?;
                }
                writes.push(Write::DeleteReservation { address, expect });
            } else if r.member.as_ref() == Some(&node.id) {
                writes.push(Write::PutReservation { reservation: Reservation { member: None, ..r }, expect });
            }
        }
        Ok(writes)
    }

    /// Deletes a reservation `owner` holds, with the subnet CIDR reservation Tether made for it.
    pub(super) async fn release_write(&self, reservation: &Reservation) -> Result<Write, TetherError> {
        if let Some(made) = reservation.subnet_reservation.as_ref().filter(|s| s.tethers) {
            self.network.unreserve_in_subnet(&made.id).await?;
        }
        Ok(Write::DeleteReservation { address: reservation.address.clone(), expect: Expect::of(Some(reservation)) })
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

    /// The sweep's part for reservations: every reserved private IP gets its subnet CIDR
    /// reservation (one a request could not make, or not record).
    pub(super) async fn sweep_reservations(&self) -> Result<Vec<String>, TetherError> {
        let mut done = Vec::new();
        for r in self.registry.reservations().await? {
            if matches!(r.address, Address::PrivateIp { .. }) && r.subnet_reservation.is_none() {
                self.reserve_in_subnet(&r).await;
                done.push(format!("{}: subnet CIDR reservation for {}", r.owner, r.address));
            }
        }
        Ok(done)
    }
}
