//! The demo's single nodes, created with the `tether` CLI: each with a data volume, some
//! with a chosen private IP, some with an Elastic IP.

use tether_cli::Environment;

use super::simulation::short;
use super::summary::{ElasticIpIntent, Intent};
use crate::{Fixture, SetupError};

/// Instance types of every node and member, in order of preference.
pub const INSTANCE_TYPES: [&str; 2] = ["m5.large", "m6i.large"];
/// Where every node and member has its data volume.
pub const DATA_DEVICE: &str = "/dev/sdf";
/// The data volume every node and member asks for (`--data-volume`): 10 GiB gp3 at /dev/sdf.
pub const DATA_VOLUME: &str = "/dev/sdf:10:gp3";

/// Node `n` through the CLI, resumed and waited for, with its data volume: every third one
/// (from the first) with a chosen private IP and the user's Elastic IP, then one with an IP
/// EC2 picks and an Elastic IP Tether allocates, then one with a chosen private IP and no
/// Elastic IP.
pub async fn create_node(fx: &Fixture, env: &Environment, n: usize) -> Result<Intent, SetupError> {
    let mut args: Vec<String> = ["nodes", "create", "--subnet", &fx.subnet_id, "--image", &fx.image_id].map(str::to_owned).to_vec();
    for instance_type in INSTANCE_TYPES {
        args.extend(["--instance-type".to_owned(), instance_type.to_owned()]);
    }
    args.extend(["--security-group".to_owned(), fx.security_group_id.clone()]);
    // Hosts 50 and up: clear of the first four, which AWS reserves in every subnet.
    let chosen_ip = chooses_private_ip(n).then(|| fx.subnet_ip(50 + n as u8).to_string());
    if let Some(ip) = &chosen_ip {
        args.extend(["--private-ip".to_owned(), ip.clone()]);
    }
    let elastic_ip = match n % 3 {
        0 => ElasticIpIntent::Users(fx.allocate_eip().await?.0),
        1 => ElasticIpIntent::Tethers,
        _ => ElasticIpIntent::None,
    };
    match &elastic_ip {
        ElasticIpIntent::Users(allocation) => args.extend(["--elastic-ip".to_owned(), allocation.clone()]),
        ElasticIpIntent::Tethers => args.push("--allocate-elastic-ip".to_owned()),
        ElasticIpIntent::None => {}
    }
    args.extend(["--data-volume".to_owned(), DATA_VOLUME.to_owned(), "--resume".to_owned(), "--wait".to_owned()]);
    println!("$ tether {}", args.join(" "));

    let created = super::group::cli(env, &args).await?;
    let id = created["id"].as_str().and_then(tether::NodeId::parse).ok_or("the API answered no valid node id")?;
    // Tether's record, for the operator's eyes only: the verdict reads EC2.
    let volume = &created["data_volumes"][0];
    let volume = match volume["volume_id"].as_str() {
        Some(volume_id) => format!("data volume {volume_id} at {}{}", volume["device_name"].as_str().unwrap_or("?"), if volume["attached"] == true { "" } else { " (not attached yet)" }),
        None => "no data volume".into(),
    };
    println!(
        "  {}: {}, generation {}, {} with {} / {}, {volume}",
        short(&id),
        created["state"].as_str().unwrap_or("?"),
        created["generation"].as_u64().unwrap_or(0),
        created["instance_id"].as_str().unwrap_or("no instance"),
        created["private_ip"].as_str().unwrap_or("-"),
        created["public_ip"].as_str().unwrap_or("no public IP")
    );
    Ok(Intent { id, private_ip: chosen_ip, elastic_ip, data_volume: Some(DATA_DEVICE.to_owned()) })
}

/// Whether node `n` asks for a private IP of its own (all but every third, from the second).
pub fn chooses_private_ip(n: usize) -> bool {
    n % 3 != 1
}
