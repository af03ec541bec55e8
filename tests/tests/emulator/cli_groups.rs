//! `tether groups …` run in-process against the local API on the emulator: a group's pools,
//! scaling, a rolling recycle and its deallocation as an operator drives them, read back from
//! the CLI's tables and blocks, its JSON, and EC2.

use std::time::Duration;

use tether::group::GroupState;
use tether::views::{GroupList, GroupMember, GroupMembers, GroupView};
use tether_tests::local_api::{LocalApi, ScheduledReconciler, SECRET_ACCESS_KEY};
use tether_tests::{Fixture, SetupError};

use super::cli::{environment, field, tether, tether_json};
use super::groups::second_subnet;

/// The reconciler's schedule, shortened: it carries a rolling recycle and a deallocation on
/// between API calls (the deployed schedule runs it every minute).
const RECONCILE_EVERY: Duration = Duration::from_millis(200);

/// The rows of a table, split at white space (the last column may hold spaces: it is joined).
fn rows(table: &str, columns: usize) -> Vec<Vec<String>> {
    table
        .lines()
        .skip(1)
        .map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            let (fixed, rest) = words.split_at(words.len().min(columns - 1));
            fixed.iter().map(|w| (*w).to_owned()).chain(std::iter::once(rest.join(" "))).collect()
        })
        .collect()
}

fn live(members: &GroupMembers) -> Vec<&GroupMember> {
    members.members.iter().filter(|m| m.node.state != tether::NodeState::Deallocated).collect()
}

#[tokio::test]
async fn a_group_goes_through_its_lifecycle_with_the_cli() -> Result<(), SetupError> {
    let fx = Fixture::new().await?;
    let api = LocalApi::start(fx.api.clone()).await?;
    let env = environment(&api.url, SECRET_ACCESS_KEY);
    let subnet_b = second_subnet(&fx).await?;
    let (allocation_id, public_ip) = fx.allocate_eip().await?;

    // Two pool addresses, one Elastic IP, a target of 2: both pool members run, the first
    // with the Elastic IP.
    let created = tether(
        &env,
        &[
            "groups", "create", "--name", "web", "--subnet", &fx.subnet_id, "--subnet", &subnet_b, "--image", &fx.image_id,
            "--instance-type", "m5.large", "--instance-type", "m6i.large", "--security-group", &fx.security_group_id,
            "--tag", "team=web", "--target", "2", "--private-ip", "10.0.1.40", "--private-ip", "10.0.1.41",
            "--elastic-ip", &allocation_id, "--wait",
        ],
    )
    .await;
    assert_eq!(created.code, 0, "{created:?}");
    let block = &created.stdout;
    assert_eq!((field(block, "state"), field(block, "target"), field(block, "running")), (Some("active"), Some("2"), Some("2")), "{block}");
    let id = field(block, "id").ok_or("no id in the block")?.to_owned();
    assert!(tether::group::GroupId::parse(&id).is_some(), "{id}");

    let members = tether(&env, &["groups", "members", &id]).await;
    assert_eq!(members.code, 0, "{members:?}");
    let header = members.stdout.lines().next().ok_or("no table")?;
    for column in ["ID", "STATE", "GEN", "POOL IP", "PRIVATE IP", "PUBLIC IP", "INSTANCE", "HELD", "NOTE"] {
        assert!(header.contains(column), "{header}");
    }
    let table = rows(&members.stdout, 9);
    let summary: Vec<[&str; 5]> = table.iter().map(|r| [r[1].as_str(), r[3].as_str(), r[4].as_str(), r[5].as_str(), r[7].as_str()]).collect();
    assert_eq!(summary, [["running", "10.0.1.40", "10.0.1.40", public_ip.as_str(), "no"], ["running", "10.0.1.41", "10.0.1.41", "-", "no"]], "{}", members.stdout);
    assert!(table[1][8].contains("held by another member"), "the note says why it has no Elastic IP: {}", members.stdout);

    // Up to 3: a member beyond the pool, with an address EC2 picks, in the emptier subnet.
    let scaled = tether(&env, &["groups", "scale", &id, "3", "--wait"]).await;
    assert_eq!(scaled.code, 0, "{scaled:?}");
    assert_eq!((field(&scaled.stdout, "target"), field(&scaled.stdout, "running")), (Some("3"), Some("3")), "{}", scaled.stdout);
    let before: GroupMembers = serde_json::from_value(tether_json(&env, &["groups", "members", &id]).await?)?;
    let running = live(&before);
    assert_eq!(running.len(), 3, "{before:?}");
    let beyond = running.iter().find(|m| m.pool_ip.is_none()).ok_or("no member beyond the pool")?;
    assert_eq!(beyond.node.spec.subnet_id, subnet_b);
    assert!(beyond.node.private_ip.as_deref().is_some_and(|ip| ip.starts_with("10.0.2.")), "{beyond:?}");

    let shown = tether(&env, &["groups", "show", &id]).await;
    assert_eq!(shown.code, 0, "{shown:?}");
    let block = &shown.stdout;
    for (key, value) in [
        ("name", "web"),
        ("state", "active"),
        ("target", "3"),
        ("running", "3"),
        ("below target", "-"),
        ("private IP pool", "10.0.1.40, 10.0.1.41"),
        ("elastic IP pool", allocation_id.as_str()),
        ("image", fx.image_id.as_str()),
        ("instance types", "m5.large, m6i.large"),
        ("tags", "team=web"),
        ("deletion protection", "on"),
        ("max unavailable", "1"),
        ("rollout", "-"),
    ] {
        assert_eq!(field(block, key), Some(value), "{key}: {block}");
    }
    let subnets = format!("{} 10.0.1.0/24 us-east-1a", fx.subnet_id);
    assert_eq!(field(block, "subnets"), Some(subnets.as_str()), "{block}");
    assert!(block.lines().any(|l| l.trim() == format!("{subnet_b} 10.0.2.0/24 us-east-1b")), "the second subnet on its own line: {block}");
    let view: GroupView = serde_json::from_value(tether_json(&env, &["groups", "show", &id]).await?)?;
    assert_eq!((view.state, view.target_capacity, view.status.running, view.status.below_target.as_deref()), (GroupState::Active, 3, 3, None));

    let listed = tether(&env, &["groups", "list"]).await;
    assert_eq!(listed.code, 0, "{listed:?}");
    let header = listed.stdout.lines().next().ok_or("no table")?;
    for column in ["ID", "NAME", "STATE", "TARGET", "RUNNING", "HELD", "ERROR", "POOL IPS", "EIPS"] {
        assert!(header.contains(column), "{header}");
    }
    assert_eq!(rows(&listed.stdout, 9), [[id.as_str(), "web", "active", "3", "3", "0", "0", "2", "1"]], "{}", listed.stdout);

    // A new image, rolled out: without the reconciler only the first batch goes (the wait
    // times out, saying so); with it every member gets a new instance on its own address.
    let images = fx.ec2.describe_images().owners("amazon").send().await?;
    let other_image = images.images().iter().filter_map(|i| i.image_id()).find(|i| *i != fx.image_id).ok_or("one AMI only")?.to_owned();
    let updated = tether(&env, &["groups", "update", &id, "--image", &other_image]).await;
    assert_eq!(updated.code, 0, "{updated:?}");
    assert_eq!(field(&updated.stdout, "image"), Some(other_image.as_str()), "{}", updated.stdout);
    let timed_out = tether(&env, &["groups", "recycle", &id, "--wait", "--timeout", "1"]).await;
    assert_eq!(timed_out.code, 1, "{timed_out:?}");
    assert!(timed_out.stderr.contains(&format!("error: timed out after 1s waiting for group {id}: ")), "{}", timed_out.stderr);
    assert!(timed_out.stderr.contains("rolling recycle under way"), "{}", timed_out.stderr);
    assert!(timed_out.stderr.contains(&format!("follow it with `tether groups show {id}`")), "{}", timed_out.stderr);
    assert_eq!(field(&timed_out.stdout, "rollout").map(|r| r.starts_with("rolling recycle since")), Some(true), "{}", timed_out.stdout);

    let reconciler = ScheduledReconciler::every(fx.tether.clone(), RECONCILE_EVERY);
    let recycled = tether(&env, &["groups", "recycle", &id, "--wait", "--timeout", "40"]).await;
    assert_eq!(recycled.code, 0, "{recycled:?}");
    assert_eq!((field(&recycled.stdout, "rollout"), field(&recycled.stdout, "running")), (Some("-"), Some("3")), "{}", recycled.stdout);
    assert!(recycled.stderr.lines().all(|l| l.starts_with('[') && l.contains(&id)), "progress lines only: {}", recycled.stderr);
    assert!(recycled.stderr.lines().last().is_some_and(|l| l.ends_with(&format!("{id} 3 of 3 running"))), "{}", recycled.stderr);
    let after: GroupMembers = serde_json::from_value(tether_json(&env, &["groups", "members", &id]).await?)?;
    assert_eq!(live(&after).len(), 3, "{after:?}");
    for member in live(&after) {
        let old = running.iter().find(|m| m.node.id == member.node.id).ok_or("a member appeared")?;
        let n = &member.node;
        assert_eq!((&n.private_ip, &n.public_ip, &n.eni_id), (&old.node.private_ip, &old.node.public_ip, &old.node.eni_id), "addresses kept");
        assert_ne!(n.instance_id, old.node.instance_id, "a new instance");
        assert_eq!(n.spec.image_id, other_image);
        let instance = fx.instance(n.instance_id.as_deref().ok_or("no instance")?).await?;
        assert_eq!(instance.image_id(), Some(other_image.as_str()), "EC2 agrees");
    }

    // A bad value: the API's detail and field, exit 1, nothing changed.
    let refused = tether(&env, &["groups", "update", &id, "--private-ip-pool", "10.0.9.9"]).await;
    assert_eq!(refused.code, 1, "{refused:?}");
    let lines: Vec<&str> = refused.stderr.lines().collect();
    assert!(lines.first().is_some_and(|l| l.starts_with("error: ") && l.contains("10.0.9.9")), "{lines:?}");
    assert!(lines.contains(&"field: private_ip_pool"), "{lines:?}");
    // Nothing to change: a usage error (exit 2) naming the settings, nothing sent.
    let nothing = tether(&env, &["groups", "update", &id, "--wait"]).await;
    assert_eq!(nothing.code, 2, "{nothing:?}");
    assert!(nothing.stderr.contains("--target") && nothing.stderr.contains("--image"), "{}", nothing.stderr);

    // Deallocation: refused while protected, with the way out; then everything goes.
    let protected = tether(&env, &["groups", "deallocate", &id, "--wait"]).await;
    assert_eq!(protected.code, 1, "{protected:?}");
    assert!(protected.stderr.starts_with("error: ") && protected.stderr.contains(&format!("tether groups update {id} --no-deletion-protection")), "{}", protected.stderr);
    let unprotected = tether(&env, &["groups", "update", &id, "--no-deletion-protection"]).await;
    assert_eq!((unprotected.code, field(&unprotected.stdout, "deletion protection")), (0, Some("off")), "{unprotected:?}");
    let gone = tether(&env, &["groups", "deallocate", &id, "--wait", "--timeout", "40"]).await;
    assert_eq!(gone.code, 0, "{gone:?}");
    assert_eq!((field(&gone.stdout, "state"), field(&gone.stdout, "running")), (Some("deallocated"), Some("0")), "{}", gone.stdout);
    drop(reconciler);
    let members: GroupMembers = serde_json::from_value(tether_json(&env, &["groups", "members", &id]).await?)?;
    assert!(live(&members).is_empty(), "{members:?}");
    assert_eq!(fx.cloud_eip(&allocation_id).await?.association_id(), None, "the user's Elastic IP is left to them");
    Ok(())
}

/// Pause and resume, paging, and the usage errors the command line itself refuses.
#[tokio::test]
async fn groups_pause_resume_and_list_a_page_at_a_time() -> Result<(), SetupError> {
    let fx = Fixture::new().await?;
    let api = LocalApi::start(fx.api.clone()).await?;
    let env = environment(&api.url, SECRET_ACCESS_KEY);
    let create = |name: &'static str, target: &'static str| {
        vec!["groups", "create", "--name", name, "--subnet", fx.subnet_id.as_str(), "--image", fx.image_id.as_str(), "--instance-type", "m5.large", "--target", target]
    };
    let first: GroupView = serde_json::from_value(tether_json(&env, &create("one", "1")).await?)?;
    let second: GroupView = serde_json::from_value(tether_json(&env, &create("two", "0")).await?)?;
    assert!(first.deletion_protection && first.max_unavailable == 1, "the defaults: {first:?}");
    let id = first.id.to_string();

    let paused = tether(&env, &["groups", "pause", &id, "--wait"]).await;
    assert_eq!(paused.code, 0, "{paused:?}");
    assert_eq!((field(&paused.stdout, "state"), field(&paused.stdout, "running"), field(&paused.stdout, "paused")), (Some("paused"), Some("0"), Some("1")));
    let resumed = tether(&env, &["groups", "resume", &id, "--wait"]).await;
    assert_eq!(resumed.code, 0, "{resumed:?}");
    assert_eq!((field(&resumed.stdout, "state"), field(&resumed.stdout, "running")), (Some("active"), Some("1")));

    let page = tether(&env, &["groups", "list", "--limit", "1"]).await;
    assert_eq!(page.code, 0, "{page:?}");
    assert_eq!(page.stdout.lines().count(), 2, "header and one row: {}", page.stdout);
    assert!(page.stderr.contains("more groups after") && page.stderr.contains("--all"), "{}", page.stderr);
    let every: GroupList = serde_json::from_value(tether_json(&env, &["groups", "list", "--limit", "1", "--all"]).await?)?;
    let mut ids: Vec<String> = every.groups.iter().map(|g| g.id.to_string()).collect();
    ids.sort();
    let mut expected = vec![id.clone(), second.id.to_string()];
    expected.sort();
    assert_eq!((ids, every.next_token), (expected, None));

    // Refused by the command line (exit 2): no target, a pool address that is no address,
    // both ways of one setting.
    let no_target = tether(&env, &["groups", "create", "--name", "x", "--subnet", &fx.subnet_id, "--image", &fx.image_id, "--instance-type", "m5.large"]).await;
    assert_eq!(no_target.code, 2, "{no_target:?}");
    assert!(no_target.stderr.contains("--target"), "{}", no_target.stderr);
    let not_an_ip = tether(&env, &["groups", "update", &id, "--private-ip-pool", "10.0.1.50,10.0.1"]).await;
    assert_eq!(not_an_ip.code, 2, "{not_an_ip:?}");
    assert!(not_an_ip.stderr.contains("`10.0.1`"), "{}", not_an_ip.stderr);
    let both = tether(&env, &["groups", "update", &id, "--deletion-protection", "--no-deletion-protection"]).await;
    assert_eq!(both.code, 2, "{both:?}");
    // '' empties a pool (a valid change: the group had none).
    let emptied: GroupView = serde_json::from_value(tether_json(&env, &["groups", "update", &id, "--elastic-ip-pool", ""]).await?)?;
    assert!(emptied.elastic_ip_pool.is_empty());
    Ok(())
}
