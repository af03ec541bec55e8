//! Human output: tables and key/value blocks.

use chrono::{DateTime, SecondsFormat, Timelike, Utc};
use serde::Serialize;
use tether::data_volumes::DataVolume;
use tether::deallocation::{DeallocationPolicy, ElasticIpFate, EniFate, VolumeFate};
use tether::group::MemberTemplate;
use tether::health::{AutoHealing, DailyWindow};
use tether::schedules::Schedule;
use tether::views::{NodeHistory, NodeList, NodeView};
use tether::NodeState;

mod groups;

/// What an answer of the API looks like without `--json`.
pub(crate) trait Shown {
    fn human(&self) -> String;
}

/// A node state as the API spells it (`running`, `launching`, …).
pub fn state_name(state: NodeState) -> String {
    name_of(&state)
}

/// A value as the API spells it: a node's or a group's state (`running`, `active`, …).
pub(crate) fn name_of<T: Serialize + std::fmt::Debug>(value: &T) -> String {
    serde_json::to_value(value).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_else(|| format!("{value:?}"))
}

/// The value as pretty JSON, as the API sent it.
pub fn json<T: Serialize>(value: &T) -> String {
    serde_json::to_string_pretty(value).unwrap_or_else(|e| format!("{{\"error\": \"cannot print JSON: {e}\"}}"))
}

pub(crate) fn time(at: &DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Secs, true)
}

pub(crate) fn or_dash(value: Option<&str>) -> String {
    value.filter(|v| !v.is_empty()).unwrap_or("-").to_owned()
}

/// Left-aligned columns separated by two spaces; the last column is not padded.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let last = cells.len().saturating_sub(1);
        let mut text = String::new();
        for (i, cell) in cells.into_iter().enumerate() {
            if i == last {
                text.push_str(cell);
            } else {
                let pad = widths[i].saturating_sub(cell.chars().count());
                text.push_str(cell);
                text.push_str(&" ".repeat(pad + 2));
            }
        }
        text.trim_end().to_owned() + "\n"
    };
    let mut out = line(header.to_vec());
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

impl Shown for NodeList {
    fn human(&self) -> String {
        node_table(&self.nodes)
    }
}

pub fn node_table(nodes: &[NodeView]) -> String {
    let rows: Vec<Vec<String>> = nodes
        .iter()
        .map(|n| {
            vec![
                n.id.to_string(),
                state_with_conditions(n),
                n.generation.to_string(),
                or_dash(n.instance_id.as_deref()),
                or_dash(n.instance_type.as_deref()),
                or_dash(n.market.map(|m| m.as_str())),
                or_dash(n.private_ip.as_deref()),
                or_dash(n.public_ip.as_deref()),
            ]
        })
        .collect();
    table(&["ID", "STATE", "GEN", "INSTANCE", "TYPE", "MARKET", "PRIVATE IP", "PUBLIC IP"], &rows)
}

/// The state, marked `(degraded)` while the node has a condition.
fn state_with_conditions(n: &NodeView) -> String {
    match n.conditions.len() {
        0 => state_name(n.state),
        _ => format!("{} (degraded)", state_name(n.state)),
    }
}

/// Each condition as `kind since TIME: message`, one per line.
fn conditions(n: &NodeView) -> String {
    let lines: Vec<String> = n.conditions.iter().map(|c| format!("{} since {}: {}", c.kind.as_str(), time(&c.since), c.message)).collect();
    lines.join("\n")
}

impl Shown for NodeView {
    fn human(&self) -> String {
        node_block(self)
    }
}

/// One node, one `key  value` line per field.
pub fn node_block(n: &NodeView) -> String {
    let elastic_ip = match (&n.persistence.elastic_ip_allocation_id, n.persistence.allocate_elastic_ip) {
        (Some(id), _) => format!("{id} (the user's)"),
        (None, true) => "allocated by Tether".to_owned(),
        (None, false) => "none".to_owned(),
    };
    let mut fields: Vec<(&str, String)> = vec![
        ("id", n.id.to_string()),
        ("state", state_name(n.state)),
        ("generation", n.generation.to_string()),
        ("instance", or_dash(n.instance_id.as_deref())),
        ("instance type", or_dash(n.instance_type.as_deref())),
        ("market", or_dash(n.market.map(|m| m.as_str()))),
        ("launched at", or_dash(n.launched_at.as_ref().map(time).as_deref())),
        ("private IP", or_dash(n.private_ip.as_deref())),
        ("public IP", or_dash(n.public_ip.as_deref())),
        ("ENI", or_dash(n.eni_id.as_deref())),
        ("MAC address", or_dash(n.mac_address.as_deref())),
        ("secondary IPs", or_dash(Some(n.secondary_private_ips.join(", ")).filter(|s| !s.is_empty()).as_deref())),
        ("IPv6", or_dash(Some(n.ipv6_addresses.join(", ")).filter(|s| !s.is_empty()).as_deref())),
        ("source/dest check", if n.spec.source_dest_check { "on" } else { "off" }.to_owned()),
        ("availability zone", or_dash(n.availability_zone.as_deref())),
        ("elastic IP", or_dash(n.elastic_ip_allocation_id.as_deref())),
        ("extra ENIs", or_dash(Some(extra_enis(n)).filter(|s| !s.is_empty()).as_deref())),
        ("data volumes", or_dash(Some(data_volumes(n)).filter(|s| !s.is_empty()).as_deref())),
        ("deallocation", deallocation_policy(&n.spec.deallocation)),
        ("auto-healing", auto_healing(&n.spec.auto_healing)),
        ("maintenance window", maintenance_window(n.spec.maintenance_window.as_ref())),
        ("schedules", or_dash(Some(&schedules(&n.spec.schedules)))),
        ("last error", or_dash(n.last_error.as_deref())),
        ("conditions", or_dash(Some(conditions(n)).filter(|s| !s.is_empty()).as_deref())),
        ("subnet", n.spec.subnet_id.clone()),
        ("launch template", or_dash(n.spec.launch_template.as_ref().map(|t| t.describe()).as_deref())),
    ];
    fields.extend(launch_fields(&MemberTemplate::of_spec(n.spec.clone())));
    fields.extend([
        ("chosen private IP", n.persistence.private_ip.map(|ip| ip.to_string()).unwrap_or_else(|| "any (EC2 picks)".into())),
        ("chosen elastic IP", elastic_ip),
        ("created at", time(&n.created_at)),
        ("updated at", time(&n.updated_at)),
        ("version", n.version.to_string()),
    ]);
    block(&fields)
}

/// The node's extra ENIs, one per line: those made (`#1 eni-… 10.0.2.20 (subnet-…)`), else
/// those asked for (`#1 in subnet-…, made at the first resume`).
fn extra_enis(n: &NodeView) -> String {
    let made = n.extra_enis.iter().map(|e| format!("#{} {} {} ({})", e.device_index, e.id, e.private_ip, e.subnet_id));
    let asked = n.spec.extra_enis.iter().filter(|x| !n.extra_enis.iter().any(|e| e.device_index == x.device_index));
    made.chain(asked.map(|x| format!("#{} in {}, made at the first resume", x.device_index, x.subnet_id))).collect::<Vec<_>>().join("\n")
}

/// The node's data volumes, one per line: those made (`/dev/sdf vol-… attached`, with
/// `final snapshot snap-…` once a deallocation took one), else those asked for
/// (`/dev/sdf 100 GiB gp3, made at the first resume`, or deleted by the deallocation).
fn data_volumes(n: &NodeView) -> String {
    let made = n.data_volumes.iter().map(|v| {
        let mut line = format!("{} {} {}", v.device_name, v.volume_id, if v.attached { "attached" } else { "not attached" });
        if !v.created_by_tether {
            line.push_str(" (the imported instance's)");
        }
        if let Some(snapshot) = &v.final_snapshot_id {
            line.push_str(&format!(", final snapshot {snapshot}"));
        }
        line
    });
    let fate = match (n.state == NodeState::Deallocated && n.generation > 0, n.spec.deallocation.data_volumes.snapshots()) {
        (false, _) => "made at the first resume",
        (true, false) => "deleted by the deallocation",
        (true, true) => "deleted by the deallocation after a final snapshot (see `tether nodes history`)",
    };
    let asked = n.spec.data_volumes.iter().filter(|x| !n.data_volumes.iter().any(|v| v.device_name == x.device_name));
    let asked = asked.map(|x| format!("{}, {fate}", data_volume_spec(x)));
    made.chain(asked).collect::<Vec<_>>().join("\n")
}

/// `/dev/sdf 100 GiB gp3 4000 IOPS 250 MiB/s encrypted (KMS key alias/data)`.
pub(crate) fn data_volume_spec(v: &DataVolume) -> String {
    let mut text = format!("{} {} GiB {}", v.device_name, v.volume_size_gib, v.volume_type.as_str());
    if let Some(iops) = v.iops {
        text.push_str(&format!(" {iops} IOPS"));
    }
    if let Some(throughput) = v.throughput_mibps {
        text.push_str(&format!(" {throughput} MiB/s"));
    }
    match (v.encrypted, &v.kms_key_id) {
        (_, Some(key)) => text.push_str(&format!(" encrypted (KMS key {key})")),
        (Some(true), None) => text.push_str(" encrypted"),
        (Some(false), None) => text.push_str(" not encrypted"),
        (None, None) => {}
    }
    text
}

/// The deallocation policy in one line, in the flags' words:
/// `ENIs delete, data volumes keep, Elastic IP release`.
pub(crate) fn deallocation_policy(p: &DeallocationPolicy) -> String {
    let enis = match p.enis {
        Some(EniFate::Delete) => "delete",
        Some(EniFate::Keep) => "keep",
        None => "default (delete; an imported instance's: keep)",
    };
    let volumes = match p.data_volumes {
        VolumeFate::Keep => "keep",
        VolumeFate::Delete => "delete",
        VolumeFate::SnapshotAndDelete => "snapshot-and-delete",
    };
    let elastic_ip = match p.elastic_ip {
        ElasticIpFate::Release => "release",
        ElasticIpFate::Keep => "keep",
    };
    format!("ENIs {enis}, data volumes {volumes}, Elastic IP {elastic_ip}")
}

/// Auto-healing in one line: `on, after 300 s impaired, grace 300 s, at most 3 heals per 24 h`, or `off`.
pub(crate) fn auto_healing(h: &AutoHealing) -> String {
    if !h.enabled {
        return "off".to_owned();
    }
    let heals = if h.max_heals == 1 { "heal" } else { "heals" };
    format!("on, after {} s impaired, grace {} s, at most {} {heals} per {} h", h.unhealthy_duration_seconds, h.grace_period_seconds, h.max_heals, h.window_hours)
}

/// `02:00-04:00 UTC`, or `-`.
pub(crate) fn maintenance_window(w: Option<&DailyWindow>) -> String {
    let time = |t: &chrono::NaiveTime| if t.second() == 0 { t.format("%H:%M").to_string() } else { t.format("%H:%M:%S").to_string() };
    w.map_or_else(|| "-".to_owned(), |w| format!("{}-{} UTC", time(&w.start), time(&w.end)))
}

/// One schedule per line: `pause 0 20 * * 1-5 (Europe/Paris)`.
fn schedules(schedules: &[Schedule]) -> String {
    schedules.iter().map(|s| format!("{} {} ({})", s.action.as_str(), s.cron.trim(), s.time_zone)).collect::<Vec<_>>().join("\n")
}

/// The launch settings of a node's spec or a group's template.
pub(crate) fn launch_fields(t: &MemberTemplate) -> Vec<(&'static str, String)> {
    let tags = t.tags.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(", ");
    vec![
        ("image", t.image_id.clone()),
        ("instance types", t.instance_types.join(", ")),
        ("on-demand fallback", yes_no(t.fallback_to_on_demand)),
        ("back to spot", t.revert_to_spot.to_string()),
        ("hand over", t.handover_after_warning_seconds.map_or_else(|| "- (AWS terminates)".to_owned(), |s| format!("{s} s after a spot warning"))),
        ("security groups", or_dash(Some(&t.security_group_ids.join(", ")))),
        ("key name", or_dash(t.key_name.as_deref())),
        ("instance profile", or_dash(t.iam_instance_profile.as_deref())),
        ("user data", t.user_data.as_ref().map(|u| format!("{} bytes", u.len())).unwrap_or_else(|| "-".into())),
        ("tags", or_dash(Some(&tags))),
    ]
}

pub(crate) fn yes_no(on: bool) -> String {
    if on { "yes" } else { "no" }.to_owned()
}

/// `key  value` lines, the values in one column; a value's further lines are indented to it.
pub(crate) fn block(fields: &[(&str, String)]) -> String {
    let width = fields.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    let indent = format!("\n{:width$}  ", "");
    fields.iter().map(|(k, v)| format!("{k:<width$}  {}\n", v.replace('\n', &indent))).collect()
}

impl Shown for NodeHistory {
    fn human(&self) -> String {
        history_table(self)
    }
}

pub fn history_table(history: &NodeHistory) -> String {
    let rows: Vec<Vec<String>> = history
        .entries
        .iter()
        .map(|e| {
            vec![
                time(&e.at),
                e.generation.to_string(),
                or_dash(e.instance_id.as_deref()),
                e.what.clone(),
                or_dash(e.by.as_deref()),
            ]
        })
        .collect();
    table(&["TIME", "GEN", "INSTANCE", "WHAT", "BY"], &rows)
}

/// JSON text re-indented as serde_json's pretty printer would, keeping the key order and
/// every value exactly as sent (the API's answer "as is").
pub fn pretty(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    let mut out = String::with_capacity(text.len() * 2);
    let mut depth = 0usize;
    let mut chars = text.chars().peekable();
    let newline = |out: &mut String, depth: usize| {
        out.push('\n');
        out.push_str(&"  ".repeat(depth));
    };
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                out.push('"');
                while let Some(s) = chars.next() {
                    out.push(s);
                    match s {
                        '\\' => out.extend(chars.next()),
                        '"' => break,
                        _ => {}
                    }
                }
            }
            '{' | '[' => {
                out.push(c);
                while chars.peek().is_some_and(|n| n.is_whitespace()) {
                    chars.next();
                }
                if chars.peek().is_some_and(|n| matches!(n, '}' | ']')) {
                    out.extend(chars.next());
                } else {
                    depth += 1;
                    newline(&mut out, depth);
                }
            }
            '}' | ']' => {
                depth = depth.saturating_sub(1);
                newline(&mut out, depth);
                out.push(c);
            }
            ',' => {
                out.push(',');
                newline(&mut out, depth);
            }
            ':' => out.push_str(": "),
            c if c.is_whitespace() => {}
            c => out.push(c),
        }
    }
    out
}
