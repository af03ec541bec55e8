//! Subnet CIDR reservations: an explicit /32 keeps EC2 from handing a reserved private IP
//! to an ENI that does not ask for it (VPC User Guide, "Subnet CIDR reservations").

use std::net::Ipv4Addr;

use aws_sdk_ec2::types::SubnetCidrReservationType;
use ipnet::Ipv4Net;

use super::{gone_is_done, missing, Ec2Cloud};
use crate::aws::aws_error;
use crate::error::AwsError;
use crate::ports::SubnetReservation;

impl Ec2Cloud {
    pub(super) async fn create_subnet_reservation(&self, subnet_id: &str, ip: Ipv4Addr, owner: &str) -> Result<SubnetReservation, AwsError> {
        let created = self
            .client
            .create_subnet_cidr_reservation()
            .subnet_id(subnet_id)
            .cidr(format!("{ip}/32"))
            .reservation_type(SubnetCidrReservationType::Explicit)
            .description(format!("Tether: {ip} for {owner}"))
            .send()
            .await
            .map_err(|e| aws_error("EC2", "CreateSubnetCidrReservation", e));
        match created {
            Ok(out) => {
                let id = out.subnet_cidr_reservation().and_then(|r| r.subnet_cidr_reservation_id());
                Ok(SubnetReservation { id: id.ok_or_else(|| missing("CreateSubnetCidrReservation", "reservation id"))?.to_owned(), tethers: true })
            }
            // "Reservation CIDR … has overlap with existing reserved CIDR block": the address
            // is reserved already. Which reservation it is, is looked up; it is not Tether's
            // to delete (an earlier attempt's, whose id was never recorded, stays too: a
            // reservation nobody uses is harmless, deleting a user's is not).
            Err(e) if e.code_is("InvalidParameterValue") && e.message.contains("overlap") => match self.covering(subnet_id, ip).await? {
                Some(id) => Ok(SubnetReservation { id, tethers: false }),
                None => Err(e),
            },
            Err(e) => Err(e),
        }
    }

    /// The subnet CIDR reservation whose range holds `ip`, if any.
    async fn covering(&self, subnet_id: &str, ip: Ipv4Addr) -> Result<Option<String>, AwsError> {
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
            let found = out.subnet_ipv4_cidr_reservations().iter().find(|r| {
                r.cidr().and_then(|c| c.parse::<Ipv4Net>().ok()).is_some_and(|range| range.contains(&ip))
            });
            if let Some(id) = found.and_then(|r| r.subnet_cidr_reservation_id()) {
                return Ok(Some(id.to_owned()));
            }
            match out.next_token() {
                Some(next) if !next.is_empty() => token = Some(next.to_owned()),
                _ => return Ok(None),
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
