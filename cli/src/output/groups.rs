//! Groups without `--json`: the list, one group's block, its members.

use std::fmt::Display;

use tether::views::{GroupList, GroupMember, GroupMembers, GroupView};

use super::{auto_healing, block, data_volume_spec, deallocation_policy, launch_fields, maintenance_window, name_of, or_dash, state_name, table, time, yes_no, Shown};

fn joined<T: Display>(items: &[T]) -> String {
    or_dash(Some(&items.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")))
}

impl Shown for GroupList {
    fn human(&self) -> String {
        let rows: Vec<Vec<String>> = self
            .groups
            .iter()
            .map(|g| {
                vec![
                    g.id.to_string(),
                    g.name.clone(),
                    name_of(&g.state),
                    g.target_capacity.to_string(),
                    g.status.running.to_string(),
                    g.status.held.to_string(),
                    g.status.error.to_string(),
                    g.private_ip_pool.len().to_string(),
                    g.elastic_ip_pool.len().to_string(),
                ]
            })
            .collect();
        table(&["ID", "NAME", "STATE", "TARGET", "RUNNING", "HELD", "ERROR", "POOL IPS", "EIPS"], &rows)
    }
}

impl Shown for GroupView {
    /// One `key  value` line per field, as a node's.
    fn human(&self) -> String {
        let s = &self.status;
        let subnets: Vec<String> = self.subnets.iter().map(|n| format!("{} {} {}", n.id, n.cidr, n.availability_zone)).collect();
        let mut fields: Vec<(&str, String)> = vec![
            ("id", self.id.to_string()),
            ("name", self.name.clone()),
            ("state", name_of(&self.state)),
            ("target", self.target_capacity.to_string()),
            ("running", s.running.to_string()),
            ("counting", format!("{} (running, launching, recovering or stopped)", s.counting)),
            ("launching", s.launching.to_string()),
            ("paused", s.paused.to_string()),
            ("held", s.held.to_string()),
            ("error", s.error.to_string()),
            ("deallocating", s.deallocating.to_string()),
            ("below target", or_dash(s.below_target.as_deref())),
            ("subnets", or_dash(Some(&subnets.join("\n")))),
            ("private IP pool", joined(&self.private_ip_pool)),
            ("elastic IP pool", joined(&self.elastic_ip_pool)),
        ];
        fields.extend(launch_fields(&self.template));
        let volumes: Vec<String> = self.template.data_volumes.iter().map(data_volume_spec).collect();
        fields.extend([
            ("data volumes", or_dash(Some(&volumes.join("\n")))),
            ("deallocation", deallocation_policy(&self.template.deallocation)),
            ("auto-healing", auto_healing(&self.template.auto_healing)),
            ("maintenance window", maintenance_window(self.template.maintenance_window.as_ref())),
            ("deletion protection", if self.deletion_protection { "on" } else { "off" }.to_owned()),
            ("max unavailable", self.max_unavailable.to_string()),
            ("rollout", self.rollout.as_ref().map_or_else(|| "-".to_owned(), |r| format!("rolling recycle since {}", time(&r.started_at)))),
            ("created at", time(&self.created_at)),
            ("updated at", time(&self.updated_at)),
            ("version", self.version.to_string()),
        ]);
        block(&fields)
    }
}

impl Shown for GroupMembers {
    fn human(&self) -> String {
        let rows: Vec<Vec<String>> = self
            .members
            .iter()
            .map(|m| {
                let n = &m.node;
                vec![
                    n.id.to_string(),
                    state_name(n.state),
                    n.generation.to_string(),
                    or_dash(m.pool_ip.map(|ip| ip.to_string()).as_deref()),
                    or_dash(n.private_ip.as_deref()),
                    or_dash(n.public_ip.as_deref()),
                    or_dash(n.instance_id.as_deref()),
                    yes_no(m.held),
                    note(m),
                ]
            })
            .collect();
        table(&["ID", "STATE", "GEN", "POOL IP", "PRIVATE IP", "PUBLIC IP", "INSTANCE", "HELD", "NOTE"], &rows)
    }
}

/// A member's last error and why it has no Elastic IP, when it has them.
fn note(m: &GroupMember) -> String {
    let notes: Vec<String> = m.node.last_error.iter().map(|e| format!("last error: {e}")).chain(m.elastic_ip_note.clone()).collect();
    or_dash(Some(&notes.join("; ")))
}
