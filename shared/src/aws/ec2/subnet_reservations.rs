//! Subnet CIDR reservations: an explicit /32 keeps EC2 from handing a reserved private IP
//! to an ENI that does not ask for it (VPC User Guide, "Subnet CIDR reservations").

use std::net::Ipv4Addr;

use aws_sdk_ec2::types::SubnetCidrReservationType;
use ipnet::Ipv4Net;

use super::{gone_is_done, missing, Ec2Cloud};
use crate::aws::aws_error;
use crate::error::AwsError;
use crate::ports::{described_by, made_at, tether_description, SubnetCidr, SubnetReservation};

impl Ec2Cloud {
    pub(super) async fn create_subnet_reservation(&self, subnet_id: &str, ip: Ipv4Addr, owner: &str, at: chrono::DateTime<chrono::Utc>) -> Result<SubnetReservation, AwsError> {
        let created = self
            .client
            .create_subnet_cidr_reservation()
            .subnet_id(subnet_id)
            .cidr(format!("{ip}/32"))
            .reservation_type(SubnetCidrReservationType::Explicit)
            .description(tether_description(&self.deployment, ip, owner, at))
            .send()
            .await
            .map_err(|e| aws_error("EC2", "CreateSubnetCidrReservation", e));
        match created {
            Ok(out) => {
                let id = out.subnet_cidr_reservation().and_then(|r| r.subnet_cidr_reservation_id());
                Ok(SubnetReservation { id: id.ok_or_else(|| missing("CreateSubnetCidrReservation", "reservation id"))?.to_owned(), tethers: true })
            }
            // "Reservation CIDR … has overlap with existing reserved CIDR block": the address
            // is reserved already. Which reservation it is, is looked up: Tether's own (an
            // earlier attempt's, whose id was never recorded) by its description; any other
            // is the user's (or another deployment's), never deleted.
            Err(e) if e.code_is("InvalidParameterValue") && e.message.contains("overlap") => {
                let covering = self.list_subnet_reservations(subnet_id).await?.into_iter().find(|r| r.cidr.contains(&ip));
                match covering {
                    Some(found) => Ok(SubnetReservation { id: found.id, tethers: found.tethers }),
                    None => Err(e),
                }
            }
            Err(e) => Err(e),
        }
    }

    /// Every subnet CIDR reservation of the subnet, this deployment's known by their description.
    pub(super) async fn list_subnet_reservations(&self, subnet_id: &str) -> Result<Vec<SubnetCidr>, AwsError> {
        let mut found = Vec::new();
        let mut token = None;
        loop {
            let out = self
                .client
                .get_subnet_cidr_reservations()
                .subnet_id(subnet_id)
                .max_results(1000)
                .set_next_token(token.take())
                .send()
                .await
                .map_err(|e| aws_error("EC2", "GetSubnetCidrReservations", e))?;
            for r in out.subnet_ipv4_cidr_reservations() {
                let (Some(id), Some(cidr)) = (r.subnet_cidr_reservation_id(), r.cidr().and_then(|c| c.parse::<Ipv4Net>().ok())) else { continue };
                let tethers = r.description().is_some_and(|d| described_by(&self.deployment, d));
                found.push(SubnetCidr { id: id.to_owned(), cidr, tethers, made_at: r.description().filter(|_| tethers).and_then(made_at) });
            }
            match out.next_token() {
                Some(next) if !next.is_empty() => token = Some(next.to_owned()),
                _ => return Ok(found),
            }
        }
    }

    pub(super) async fn delete_subnet_reservation(&self, reservation_id: &str) -> Result<(), AwsError> {
        let deleted = self
            .client
            .delete_subnet_cidr_reservation()
            .subnet_cidr_reservation_id(reservation_id)
            .send()
            .await
            .map(drop)
            .map_err(|e| aws_error("EC2", "DeleteSubnetCidrReservation", e));
        gone_is_done(deleted)
    }
}
