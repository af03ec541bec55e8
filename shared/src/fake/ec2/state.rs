//! The EC2 API calls themselves, on the fake's state: each checks what AWS checks and
//! answers with AWS's error codes.

use super::*;

impl State {
    pub(super) fn next_id(&mut self, prefix: &str) -> String {
        self.counter += 1;
        format!("{prefix}-{:017x}", self.counter)
    }

    pub(super) fn throttle(&mut self, operation: &'static str) -> Result<(), AwsError> {
        if !self.throttling {
            return Ok(());
        }
        let now_ms = match &self.sim_clock {
            Some((start, clock)) => u64::try_from((clock.now() - *start).num_milliseconds()).unwrap_or(0),
            None => self.clock_ms,
        };
        let (request, resource) = buckets_of(operation);
        let mut take = |key: String, figures: (u64, u64)| self.buckets.entry(key).or_insert_with(|| Bucket::full(figures)).take(now_ms);
        if take(operation.to_owned(), request) && resource.is_none_or(|figures| take(format!("{operation}.instances"), figures)) {
            Ok(())
        } else {
            Err(aws(EC2, operation, "RequestLimitExceeded", "Request limit exceeded."))
        }
    }

    pub(super) fn is_known_type(&self, instance_type: &str) -> bool {
        KNOWN_INSTANCE_TYPES.contains(&instance_type) || self.extra_types.contains(instance_type)
    }

    /// The most network interfaces the type takes; `None` for a type not offered.
    pub(super) fn interface_limit(&self, instance_type: &str) -> Option<u8> {
        self.is_known_type(instance_type).then(|| interface_limit(instance_type))
    }

    pub(super) fn eip_info(&self, allocation_id: &str, eip: &Eip) -> ElasticIpInfo {
        let instance_id = eip
            .eni
            .as_ref()
            .and_then(|e| self.enis.get(e))
            .and_then(|e| e.attachment.as_ref())
            .map(|a| a.instance_id.clone());
        ElasticIpInfo {
            allocation_id: allocation_id.to_owned(),
            public_ip: eip.public_ip.clone(),
            network_interface_id: eip.eni.clone(),
            association_id: eip.association_id.clone(),
            instance_id,
        }
    }

    pub(super) fn eip_on(&self, eni_id: &str) -> Option<(&String, &Eip)> {
        self.eip_of_eni.get(eni_id).and_then(|allocation_id| self.eips.get_key_value(allocation_id))
    }

    pub(super) fn ip_taken(&self, subnet_id: &str, ip: Ipv4Addr) -> bool {
        self.enis.values().any(|e| e.subnet_id == subnet_id && (e.private_ip == ip || e.secondary_ips.contains(&ip)))
    }

    /// Whether a subnet CIDR reservation holds `ip`: EC2 never picks it for an ENI that does
    /// not ask for it.
    pub(super) fn ip_reserved(&self, subnet_id: &str, ip: Ipv4Addr) -> bool {
        self.subnet_reservations.values().any(|(subnet, range, _)| subnet == subnet_id && range.contains(&ip))
    }

    /// The private IP a new ENI gets: the requested one if the rules allow it, else a
    /// random free one that is never one of the 5 reserved nor in a subnet CIDR reservation.
    pub(super) fn private_ip_for(&mut self, operation: &'static str, subnet_id: &str, cidr: Ipv4Net, wanted: Option<Ipv4Addr>) -> Result<Ipv4Addr, AwsError> {
        let network = u32::from(cidr.network());
        let broadcast = u32::from(cidr.broadcast());
        if let Some(ip) = wanted {
            if !cidr.contains(&ip) {
                return Err(aws(EC2, operation, "InvalidParameterValue", "Address does not fall within the subnet's address range"));
            }
            let n = u32::from(ip);
            if n - network <= 3 || n == broadcast {
                return Err(aws(EC2, operation, "InvalidParameterValue", "Address is in subnet's reserved address range"));
            }
            if self.ip_taken(subnet_id, ip) {
                return Err(aws(EC2, operation, "InvalidIPAddress.InUse", "The specified address is already in use."));
            }
            return Ok(ip);
        }
        let full = || {
            aws(EC2, operation, "InsufficientFreeAddressesInSubnet", "The specified subnet does not have enough free addresses to satisfy the request.")
        };
        // Usable: network+4 ..= broadcast-1.
        let (first, last) = (network + 4, broadcast.checked_sub(1).ok_or_else(full)?);
        if first > last {
            return Err(full());
        }
        let start = self.rng.u32(first..=last);
        let size = last - first + 1;
        (0..size)
            .map(|i| Ipv4Addr::from(first + (start - first + i) % size))
            .find(|ip| !self.ip_taken(subnet_id, *ip) && !self.ip_reserved(subnet_id, *ip))
            .ok_or_else(full)
    }

    pub(super) fn new_eni(&mut self, subnet_id: &str, private_ip: Ipv4Addr, picked: bool, security_groups: Vec<String>, tags: BTreeMap<String, String>) -> EniRecord {
        let id = self.next_id("eni");
        let c = self.counter;
        let mac = format!("02:00:{:02x}:{:02x}:{:02x}:{:02x}", (c >> 24) & 0xff, (c >> 16) & 0xff, (c >> 8) & 0xff, c & 0xff);
        let az = self.subnets[subnet_id].az.clone();
        let eni = Eni {
            id: id.clone(),
            subnet_id: subnet_id.to_owned(),
            private_ip,
            mac,
            az,
            security_groups,
            tags,
            secondary_ips: Vec::new(),
            ipv6: Vec::new(),
            source_dest_check: true,
            public_ip: false,
            attachment: None,
            picked,
        };
        let record = eni.record();
        self.enis.insert(id, eni);
        record
    }

    pub(super) fn set_life(&mut self, instance_id: &str, life: Life) {
        if let Some(instance) = self.instances.get_mut(instance_id) {
            instance.life = life;
            self.events.push(InstanceEvent::StateChange { instance_id: instance_id.to_owned(), state: life.event_state() });
        }
    }

    // ---- the AWS calls ----

    pub(super) fn create_subnet_cidr_reservation(&mut self, subnet_id: &str, range: Ipv4Net, description: String) -> Result<String, AwsError> {
        let op = "CreateSubnetCidrReservation";
        let subnet = self.subnets.get(subnet_id).ok_or_else(|| aws(EC2, op, "InvalidSubnetID.NotFound", format!("The subnet ID '{subnet_id}' does not exist")))?;
        if !subnet.cidr.contains(&range) {
            return Err(aws(EC2, op, "InvalidParameterValue", format!("Reservation CIDR should be within subnet CIDR block ({})", subnet.cidr)));
        }
        let vpc_id = subnet.vpc_id.clone();
        let overlaps = self.subnet_reservations.values().any(|(other, existing, _)| {
            self.subnets.get(other).is_some_and(|s| s.vpc_id == vpc_id) && (existing.contains(&range) || range.contains(existing))
        });
        if overlaps {
            return Err(aws(EC2, op, "InvalidParameterValue", format!("Reservation CIDR {range} has overlap with existing reserved CIDR block")));
        }
        let id = self.next_id("scr");
        self.subnet_reservations.insert(id.clone(), (subnet_id.to_owned(), range, description));
        Ok(id)
    }

    pub(super) fn delete_subnet_cidr_reservation(&mut self, id: &str) -> Result<(), AwsError> {
        match self.subnet_reservations.remove(id) {
            Some(_) => Ok(()),
            None => Err(aws(EC2, "DeleteSubnetCidrReservation", "InvalidSubnetCidrReservationID.NotFound", format!("The subnet-cidr-reservation ID '{id}' does not exist"))),
        }
    }

    pub(super) fn describe_subnet(&self, subnet_id: &str) -> Result<SubnetInfo, AwsError> {
        let s = self.subnets.get(subnet_id).ok_or_else(|| {
            aws(EC2, "DescribeSubnets", "InvalidSubnetID.NotFound", format!("The subnet ID '{subnet_id}' does not exist"))
        })?;
        Ok(SubnetInfo {
            cidr: s.cidr,
            availability_zone: s.az.clone(),
            vpc_id: s.vpc_id.clone(),
            ipv6_cidrs: s.ipv6.into_iter().collect(),
            map_public_ip_on_launch: s.map_public_ip_on_launch,
        })
    }

    pub(super) fn create_network_interface(&mut self, request: &EniRequest) -> Result<EniRecord, AwsError> {
        let op = "CreateNetworkInterface";
        let token = request.client_token();
        if let Some((earlier, record)) = self.eni_tokens.get(&token) {
            if earlier != request {
                return Err(idempotent_mismatch(op));
            }
            return Ok(record.clone());
        }
        let subnet = self.subnets.get(&request.subnet_id).cloned().ok_or_else(|| {
            aws(EC2, op, "InvalidSubnetID.NotFound", format!("The subnet ID '{}' does not exist", request.subnet_id))
        })?;
        let ip = self.private_ip_for(op, &request.subnet_id, subnet.cidr, request.private_ip)?;
        let mut tags = request.tags.clone();
        tags.extend([(TAG_NODE_ID.to_owned(), request.node_id.to_string()), (TAG_MANAGED.to_owned(), "true".to_owned())]);
        if request.device_index > 0 {
            tags.insert(TAG_DEVICE_INDEX.to_owned(), request.device_index.to_string());
        }
        if request.ipv6_count > 0 && subnet.ipv6.is_none() {
            return Err(no_ipv6(op, &request.subnet_id));
        }
        let record = self.new_eni(&request.subnet_id, ip, request.private_ip.is_none(), request.security_group_ids.clone(), tags);
        let record = self.assign_private_ip_addresses(&record.id, &[], request.secondary_ip_count)?;
        let record = self.assign_ipv6_addresses(&record.id, &[], request.ipv6_count)?;
        self.eni_tokens.insert(token, (request.clone(), record.clone()));
        Ok(record)
    }

    pub(super) fn assign_private_ip_addresses(&mut self, eni_id: &str, addresses: &[Ipv4Addr], count: u8) -> Result<EniRecord, AwsError> {
        let op = "AssignPrivateIpAddresses";
        let eni = self.enis.get(eni_id).ok_or_else(|| not_found_eni(op, eni_id))?;
        let (subnet_id, cidr) = (eni.subnet_id.clone(), self.subnets[&eni.subnet_id].cidr);
        if eni.secondary_ips.len() + addresses.len() + usize::from(count) > usize::from(crate::network_identity::MAX_EXTRA_ADDRESSES) {
            return Err(aws(EC2, op, "PrivateIpAddressLimitExceeded", "Number of private addresses will exceed limit."));
        }
        let mut picked = Vec::new();
        for wanted in addresses.iter().map(|a| Some(*a)).chain((0..count).map(|_| None)) {
            // One already on this ENI is assigned already (a retry).
            if wanted.is_some_and(|ip| self.enis[eni_id].secondary_ips.contains(&ip)) {
                continue;
            }
            let ip = self.private_ip_for(op, &subnet_id, cidr, wanted)?;
            picked.push(ip);
            if let Some(eni) = self.enis.get_mut(eni_id) {
                eni.secondary_ips.push(ip);
            }
        }
        Ok(self.enis[eni_id].record())
    }

    pub(super) fn unassign_private_ip_addresses(&mut self, eni_id: &str, addresses: &[Ipv4Addr]) -> Result<(), AwsError> {
        let op = "UnassignPrivateIpAddresses";
        let eni = self.enis.get_mut(eni_id).ok_or_else(|| not_found_eni(op, eni_id))?;
        if let Some(missing) = addresses.iter().find(|a| !eni.secondary_ips.contains(a)) {
            return Err(aws(EC2, op, "InvalidParameterValue", format!("Some of the specified addresses are not assigned to interface {eni_id}: {missing}")));
        }
        eni.secondary_ips.retain(|ip| !addresses.contains(ip));
        Ok(())
    }

    pub(super) fn assign_ipv6_addresses(&mut self, eni_id: &str, addresses: &[std::net::Ipv6Addr], count: u8) -> Result<EniRecord, AwsError> {
        let op = "AssignIpv6Addresses";
        let eni = self.enis.get(eni_id).ok_or_else(|| not_found_eni(op, eni_id))?;
        if addresses.is_empty() && count == 0 {
            return Ok(eni.record());
        }
        let subnet_id = eni.subnet_id.clone();
        let Some(cidr) = self.subnets[&subnet_id].ipv6 else { return Err(no_ipv6(op, &subnet_id)) };
        let taken = |s: &Self, ip: &std::net::Ipv6Addr| s.enis.values().any(|e| e.subnet_id == subnet_id && e.ipv6.contains(ip));
        for ip in addresses {
            if self.enis[eni_id].ipv6.contains(ip) {
                continue;
            }
            if !cidr.contains(ip) {
                return Err(aws(EC2, op, "InvalidParameterValue", format!("Address {ip} does not fall within the subnet's IPv6 range {cidr}")));
            }
            if taken(self, ip) {
                return Err(aws(EC2, op, "InvalidIPAddress.InUse", format!("Address {ip} is in use.")));
            }
            if let Some(eni) = self.enis.get_mut(eni_id) {
                eni.ipv6.push(*ip);
            }
        }
        for _ in 0..count {
            let ip = loop {
                let candidate = std::net::Ipv6Addr::from(u128::from(cidr.network()) | u128::from(self.rng.u32(16..u32::MAX)));
                if !taken(self, &candidate) {
                    break candidate;
                }
            };
            if let Some(eni) = self.enis.get_mut(eni_id) {
                eni.ipv6.push(ip);
            }
        }
        Ok(self.enis[eni_id].record())
    }

    pub(super) fn unassign_ipv6_addresses(&mut self, eni_id: &str, addresses: &[std::net::Ipv6Addr]) -> Result<(), AwsError> {
        let op = "UnassignIpv6Addresses";
        let eni = self.enis.get_mut(eni_id).ok_or_else(|| not_found_eni(op, eni_id))?;
        if let Some(missing) = addresses.iter().find(|a| !eni.ipv6.contains(a)) {
            return Err(aws(EC2, op, "InvalidParameterValue", format!("Some of the specified addresses are not assigned to interface {eni_id}: {missing}")));
        }
        eni.ipv6.retain(|ip| !addresses.contains(ip));
        Ok(())
    }

    pub(super) fn delete_network_interface(&mut self, eni_id: &str) -> Result<(), AwsError> {
        let op = "DeleteNetworkInterface";
        let eni = self.enis.get(eni_id).ok_or_else(|| not_found_eni(op, eni_id))?;
        if eni.attachment.is_some() {
            return Err(aws(EC2, op, "InvalidNetworkInterface.InUse", format!("The network interface '{eni_id}' is currently in use.")));
        }
        self.remove_eni(eni_id);
        Ok(())
    }

    /// Deletes the ENI; an Elastic IP on it is disassociated (and kept).
    pub(super) fn remove_eni(&mut self, eni_id: &str) {
        self.enis.remove(eni_id);
        self.take_eip_off(eni_id);
    }

    pub(super) fn describe_address(&self, allocation_id: &str) -> Result<ElasticIpInfo, AwsError> {
        let eip = self.eips.get(allocation_id).ok_or_else(|| not_found_allocation("DescribeAddresses", allocation_id))?;
        Ok(self.eip_info(allocation_id, eip))
    }

    pub(super) fn associate_address(&mut self, allocation_id: &str, eni_id: &str, allow_reassociation: bool) -> Result<(), AwsError> {
        let op = "AssociateAddress";
        let eip = self.eips.get(allocation_id).ok_or_else(|| not_found_allocation(op, allocation_id))?;
        if !self.enis.contains_key(eni_id) {
            return Err(not_found_eni(op, eni_id));
        }
        if eip.eni.as_deref() == Some(eni_id) {
            return Ok(());
        }
        if !allow_reassociation {
            if let Some(association) = &eip.association_id {
                return Err(aws(EC2, op, "Resource.AlreadyAssociated", format!("resource {allocation_id} is already associated with associate-id {association}")));
            }
            if let Some((other, _)) = self.eip_on(eni_id) {
                return Err(aws(EC2, op, "Resource.AlreadyAssociated", format!("the private IP of {eni_id} is already associated with {other}")));
            }
        }
        // Reassociation moves it; an ENI's primary private IP holds one Elastic IP.
        self.take_eip_off(eni_id);
        let association_id = self.next_id("eipassoc");
        let eip = self.eips.get_mut(allocation_id).expect("checked above");
        if let Some(previous) = eip.eni.replace(eni_id.to_owned()) {
            self.eip_of_eni.remove(&previous);
        }
        eip.association_id = Some(association_id);
        self.eip_of_eni.insert(eni_id.to_owned(), allocation_id.to_owned());
        Ok(())
    }

    /// Disassociates the Elastic IP on `eni_id`, if one is.
    pub(super) fn take_eip_off(&mut self, eni_id: &str) {
        if let Some(eip) = self.eip_of_eni.remove(eni_id).and_then(|allocation_id| self.eips.get_mut(&allocation_id)) {
            eip.eni = None;
            eip.association_id = None;
        }
    }

    pub(super) fn allocate_address(&mut self, node_id: Option<&NodeId>) -> Result<(String, String), AwsError> {
        if self.eip_limit.is_some_and(|limit| self.eips.len() >= limit) {
            return Err(aws(EC2, "AllocateAddress", "AddressLimitExceeded", "The maximum number of addresses has been reached."));
        }
        let allocation_id = self.next_id("eipalloc");
        self.public_ips += 1;
        let public_ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 0)) + self.public_ips).to_string();
        let tags = match node_id {
            Some(id) => BTreeMap::from([(TAG_NODE_ID.to_owned(), id.to_string()), (TAG_MANAGED.to_owned(), "true".to_owned())]),
            None => BTreeMap::new(),
        };
        self.eips.insert(allocation_id.clone(), Eip { public_ip: public_ip.clone(), eni: None, association_id: None, tags });
        Ok((allocation_id, public_ip))
    }

    pub(super) fn disassociate_address(&mut self, association_id: &str) -> Result<(), AwsError> {
        let eip = self.eips.values_mut().find(|e| e.association_id.as_deref() == Some(association_id)).ok_or_else(|| {
            aws(EC2, "DisassociateAddress", "InvalidAssociationID.NotFound", format!("The association ID '{association_id}' does not exist"))
        })?;
        eip.association_id = None;
        if let Some(eni_id) = eip.eni.take() {
            self.eip_of_eni.remove(&eni_id);
        }
        Ok(())
    }

    pub(super) fn release_address(&mut self, allocation_id: &str) -> Result<(), AwsError> {
        let op = "ReleaseAddress";
        let eip = self.eips.get(allocation_id).ok_or_else(|| not_found_allocation(op, allocation_id))?;
        // In a VPC an associated address must be disassociated first.
        if eip.association_id.is_some() {
            return Err(aws(EC2, op, "InvalidIPAddress.InUse", format!("Address {} is in use.", eip.public_ip)));
        }
        self.eips.remove(allocation_id);
        Ok(())
    }

    pub(super) fn run_instances(&mut self, params: LaunchParams, client_token: &str) -> Result<LaunchedInstance, AwsError> {
        let op = "RunInstances";
        if client_token.len() > 64 || !client_token.is_ascii() {
            return Err(aws(EC2, op, "InvalidParameterValue", "Client token must be at most 64 ASCII characters."));
        }
        // A known token is answered first, before any other check (even an ENI now in use).
        if let Some((earlier, instance_id)) = self.launch_tokens.get(client_token) {
            if *earlier != params {
                return Err(idempotent_mismatch(op));
            }
            return Ok(self.launched(instance_id));
        }
        let eni = self.enis.get(&params.eni_id).ok_or_else(|| not_found_eni(op, &params.eni_id))?;
        if eni.attachment.is_some() {
            return Err(aws(EC2, op, "InvalidNetworkInterface.InUse", format!("Interface: [{}] in use.", params.eni_id)));
        }
        let Some(most) = self.interface_limit(&params.instance_type) else {
            return Err(aws(EC2, op, "InvalidParameterValue", format!("Invalid value '{}' for InstanceType.", params.instance_type)));
        };
        for (index, (device_index, extra_id)) in params.extra_enis.iter().enumerate() {
            let extra = self.enis.get(extra_id).ok_or_else(|| not_found_eni(op, extra_id))?;
            if extra.attachment.is_some() {
                return Err(aws(EC2, op, "InvalidNetworkInterface.InUse", format!("Interface: [{extra_id}] in use.")));
            }
            if extra.az != eni.az {
                return Err(aws(EC2, op, "InvalidParameterCombination", format!("Network interface {extra_id} is in {}, not in the instance's {}.", extra.az, eni.az)));
            }
            if *device_index == 0 || params.extra_enis[..index].iter().any(|(i, _)| i == device_index) {
                return Err(aws(EC2, op, "InvalidParameterValue", format!("Each network interface requires a unique device index; {device_index} is repeated.")));
            }
        }
        if params.extra_enis.len() + 1 > usize::from(most) {
            let message = format!("The instance type {} supports a maximum of {most} network interfaces.", params.instance_type);
            return Err(aws(EC2, op, "InvalidParameterValue", message));
        }
        if self.out_of_capacity.contains(&(params.instance_type.clone(), params.market.as_str())) {
            return Err(aws(
                EC2,
                op,
                "InsufficientInstanceCapacity",
                format!(
                    "We currently do not have sufficient {} capacity in the Availability Zone you requested ({}). Our system will be working on provisioning additional capacity.",
                    params.instance_type, eni.az
                ),
            ));
        }
        let (subnet_id, az, private_ip) = (eni.subnet_id.clone(), eni.az.clone(), eni.private_ip);
        let instance_id = self.next_id("i");
        let attachment_id = self.next_id("eni-attach");
        let eni = self.enis.get_mut(&params.eni_id).expect("checked above");
        eni.attachment = Some(Attachment { id: attachment_id, instance_id: instance_id.clone(), delete_on_termination: false, device_index: 0 });
        for (device_index, extra_id) in &params.extra_enis {
            let id = self.next_id("eni-attach");
            let extra = self.enis.get_mut(extra_id).expect("checked above");
            extra.attachment = Some(Attachment { id, instance_id: instance_id.clone(), delete_on_termination: false, device_index: *device_index });
        }
        self.instances.insert(
            instance_id.clone(),
            Instance {
                life: Life::Pending,
                instance_type: params.instance_type.clone(),
                market: params.market,
                image_id: params.image_id.clone(),
                key_name: params.key_name.clone(),
                iam_instance_profile: params.iam_instance_profile.clone(),
                metadata_options: params.metadata_options,
                tags: params.tags.clone(),
                subnet_id,
                az,
                primary_eni: Some(params.eni_id.clone()),
                extra_enis: params.extra_enis.iter().map(|(_, id)| id.clone()).collect(),
                private_ip,
                client_token: Some(client_token.to_owned()),
            },
        );
        self.events.push(InstanceEvent::StateChange { instance_id: instance_id.clone(), state: InstanceState::Pending });
        self.launch_tokens.insert(client_token.to_owned(), (params, instance_id.clone()));
        Ok(self.launched(&instance_id))
    }

    pub(super) fn launched(&self, instance_id: &str) -> LaunchedInstance {
        let instance = &self.instances[instance_id];
        LaunchedInstance {
            id: instance_id.to_owned(),
            instance_type: instance.instance_type.clone(),
            market: instance.market,
            gone: matches!(instance.life, Life::ShuttingDown | Life::Terminated),
        }
    }

    pub(super) fn terminate_instances(&mut self, instance_id: &str) -> Result<(), AwsError> {
        let instance = self.instances.get(instance_id).ok_or_else(|| {
            aws(EC2, "TerminateInstances", "InvalidInstanceID.NotFound", format!("The instance ID '{instance_id}' does not exist"))
        })?;
        if instance.life.can_terminate() {
            self.set_life(instance_id, Life::ShuttingDown);
        }
        Ok(())
    }

    /// One step of one instance's own progress: pending → running, stopping → stopped →
    /// pending (EC2 restarts a stopped spot instance when capacity returns), shutting-down →
    /// terminated (its ENIs released). Returns whether anything changed.
    pub(super) fn step(&mut self, instance_id: &str) -> bool {
        let Some(instance) = self.instances.get(instance_id) else { return false };
        match instance.life {
            Life::Pending => self.set_life(instance_id, Life::Running),
            Life::Stopping => self.set_life(instance_id, Life::Stopped),
            Life::Stopped => self.set_life(instance_id, Life::Pending),
            Life::ShuttingDown => {
                let enis: Vec<String> = instance.primary_eni.iter().chain(&instance.extra_enis).cloned().collect();
                for eni_id in enis {
                    let delete = self.enis.get_mut(&eni_id).and_then(|e| e.attachment.take()).is_some_and(|a| a.delete_on_termination);
                    if delete {
                        self.remove_eni(&eni_id);
                    }
                }
                if let Some(instance) = self.instances.get_mut(instance_id) {
                    instance.primary_eni = None;
                    instance.extra_enis.clear();
                }
                self.detach_volumes_of(instance_id);
                self.set_life(instance_id, Life::Terminated);
            }
            Life::Running | Life::Terminated => return false,
        }
        true
    }

    pub(super) fn summary(&self, instance_id: &str) -> Result<InstanceSummary, AwsError> {
        let instance = self.instances.get(instance_id).ok_or_else(|| {
            aws(EC2, "DescribeInstances", "InvalidInstanceID.NotFound", format!("The instance ID '{instance_id}' does not exist"))
        })?;
        let view = self.view(instance_id, instance);
        Ok(InstanceSummary {
            id: view.id,
            state: view.state,
            instance_type: view.instance_type,
            market: view.market,
            private_ip: view.private_ip.map(|ip| ip.to_string()),
            public_ip: view.public_ip,
            primary_eni_id: view.primary_eni_id,
        })
    }

    /// The instance with Tether's tags, as the adapter reads them; `None` without a node id.
    pub(super) fn tagged(&self, instance_id: &str) -> Option<Tagged<InstanceSummary>> {
        let instance = self.instances.get(instance_id)?;
        let node_id = instance.tags.get(TAG_NODE_ID).and_then(|t| NodeId::parse(t))?;
        let generation = instance.tags.get(TAG_GENERATION).and_then(|g| g.parse().ok());
        Some(Tagged { node_id, generation, device_index: None, attached: true, resource: self.summary(instance_id).ok()? })
    }

    pub(super) fn view(&self, id: &str, instance: &Instance) -> InstanceView {
        let attached = instance.life != Life::Terminated;
        InstanceView {
            id: id.to_owned(),
            state: instance.life.as_str().to_owned(),
            instance_type: instance.instance_type.clone(),
            market: instance.market,
            primary_eni_id: instance.primary_eni.clone(),
            private_ip: attached.then_some(instance.private_ip),
            // The Elastic IP on its primary ENI, else one from Amazon's pool if the ENI asks
            // (one per instance: derived from its id here).
            public_ip: instance.primary_eni.as_deref().and_then(|e| self.eip_on(e)).map(|(_, eip)| eip.public_ip.clone()).or_else(|| {
                let pooled = instance.primary_eni.as_deref().and_then(|e| self.enis.get(e)).is_some_and(|e| e.public_ip) && attached;
                pooled.then(|| format!("3.0.{}.{}", id.len() % 256, id.bytes().fold(0u8, |a, b| a.wrapping_add(b))))
            }),
            node_id: instance.tags.get(TAG_NODE_ID).cloned(),
            generation: instance.tags.get(TAG_GENERATION).and_then(|g| g.parse().ok()),
            client_token: instance.client_token.clone(),
        }
    }
}

/// EC2's refusal of IPv6 addresses in a subnet without an IPv6 CIDR block.
fn no_ipv6(operation: &'static str, subnet_id: &str) -> AwsError {
    aws(EC2, operation, "InvalidParameterValue", format!("You cannot specify IPv6 addresses: subnet {subnet_id} has no IPv6 CIDR block"))
}
