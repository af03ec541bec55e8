//! `tether groups …`: the requests the group commands send, and how `--wait` follows a group.

use std::io::Write;

use tether::group::{GroupState, MemberTemplate};
use tether::lifecycle::NodePatch;
use tether::views::{CreateGroup, DeallocateGroup, GroupList, GroupMembers, GroupPatch, GroupView, Scale};

use crate::wait::Watched;
use crate::{http, launch_patch, list_path, template, to_json, CliError, GroupActionArgs, GroupsCommand, Page, Planned, Session};

/// The first request of a group command, built from the command line alone.
pub(crate) fn plan(command: &GroupsCommand) -> Result<Planned, CliError> {
    let group_path = |id: &str, action: &str| format!("/groups/{}{action}", http::encode(id));
    let act = |a: &GroupActionArgs, action: &str, body: Option<Vec<u8>>| Planned::post(group_path(&a.id, action), body, &a.post, a.wait.timeout());
    Ok(match command {
        GroupsCommand::List { limit, .. } => Planned::get(list_path("/groups", *limit, None)),
        GroupsCommand::Show { id } => Planned::get(group_path(id, "")),
        GroupsCommand::Members { id } => Planned::get(group_path(id, "/members")),
        GroupsCommand::Scale { action, target } => act(action, "/scale", Some(to_json(&Scale { target_capacity: *target })?)),
        GroupsCommand::Pause(action) => act(action, "/pause", None),
        GroupsCommand::Resume(action) => act(action, "/resume", None),
        GroupsCommand::Recycle(action) => act(action, "/recycle", None),
        GroupsCommand::Deallocate { action, keep_enis } => act(action, "/deallocate", Some(to_json(&DeallocateGroup { keep_enis: *keep_enis })?)),
        GroupsCommand::Create(args) => {
            let request = CreateGroup {
                name: args.name.clone(),
                subnet_ids: args.subnets.clone(),
                template: MemberTemplate {
                    data_volumes: args.data.volumes(),
                    deallocation: args.deallocation.policy(),
                    auto_healing: args.healing.policy(),
                    maintenance_window: args.healing.maintenance_window,
                    ..template(&args.launch)?
                },
                target_capacity: args.target,
                private_ip_pool: args.private_ips.clone(),
                elastic_ip_pool: args.elastic_ips.clone(),
                max_unavailable: args.max_unavailable,
                deletion_protection: !args.no_deletion_protection,
                schedules: Vec::new(),
            };
            Planned::post("/groups".to_owned(), Some(to_json(&request)?), &args.post, args.wait.timeout())
        }
        GroupsCommand::Update(args) => {
            let patch = GroupPatch {
                name: args.name.clone(),
                subnet_ids: args.subnets.clone().map(|l| l.0),
                template: Some(launch_patch(&args.launch)?).filter(|t| *t != NodePatch::default()),
                target_capacity: args.target,
                private_ip_pool: args.private_ip_pool.clone().map(|l| l.0),
                elastic_ip_pool: args.elastic_ip_pool.clone().map(|l| l.0),
                max_unavailable: args.max_unavailable,
                deletion_protection: match (args.deletion_protection, args.no_deletion_protection) {
                    (true, _) => Some(true),
                    (_, true) => Some(false),
                    _ => None,
                },
                ..GroupPatch::default()
            };
            Planned::patch(group_path(&args.id, ""), to_json(&patch)?, args.wait.timeout())
        }
    })
}

impl Session<'_> {
    pub(crate) async fn perform_group(
        &self,
        command: GroupsCommand,
        request: Planned,
        out: &mut (dyn Write + Send),
        err: &mut (dyn Write + Send),
    ) -> Result<(), CliError> {
        match command {
            GroupsCommand::List { limit, all } => self.list::<GroupList>("/groups", &request, limit, all, out, err).await,
            GroupsCommand::Members { .. } => self.show::<GroupMembers>(&request, out, err).await,
            _ => self.act::<GroupView>(&request, out, err).await,
        }
    }
}

impl Page for GroupList {
    fn next_token(&self) -> Option<&str> {
        self.next_token.as_deref()
    }

    fn append(&mut self, next: Self) {
        self.groups.extend(next.groups);
        self.next_token = next.next_token;
    }
}

impl Watched for GroupView {
    const KIND: &'static str = "group";

    fn id(&self) -> String {
        self.id.to_string()
    }

    fn path(&self) -> String {
        format!("/groups/{}", http::encode(self.id.as_str()))
    }

    /// The group has nothing left to do (members held or in error wait for the user).
    fn settled(&self) -> bool {
        self.status.settled
    }

    /// `2 of 3 running: 1 launching or recovering`, `being deallocated: 2 member(s) left`, …
    fn progress(&self) -> String {
        let s = &self.status;
        match self.state {
            GroupState::Active => {
                let mut line = match &s.below_target {
                    Some(why) => why.clone(),
                    None if s.counting > self.target_capacity => {
                        format!("{} of {} running: {} more than the target, being paused", s.running, self.target_capacity, s.counting - self.target_capacity)
                    }
                    None => format!("{} of {} running", s.running, self.target_capacity),
                };
                if self.rollout.is_some() {
                    line.push_str(&format!("; rolling recycle under way, {} at a time", self.max_unavailable));
                }
                line
            }
            GroupState::Paused if s.counting > 0 => format!("paused: {} member(s) still to pause", s.counting),
            GroupState::Paused => format!("paused: no member running ({} paused, {} held)", s.paused, s.held),
            GroupState::Deallocating => match s.counting + s.paused + s.held + s.error + s.deallocating {
                0 => "being deallocated: no member left; the group is done at its controller's next run".to_owned(),
                left => format!("being deallocated: {left} member(s) left, {} deallocating", s.deallocating),
            },
            GroupState::Deallocated => "deallocated".to_owned(),
        }
    }

    fn unsettled(&self) -> String {
        self.progress()
    }

    /// Settled with members in error: the group cannot bring them back by itself.
    fn failure(&self) -> Option<String> {
        let s = &self.status;
        (s.error > 0).then(|| s.below_target.clone().unwrap_or_else(|| format!("{} member(s) in error", s.error)))
    }

    fn follow(&self) -> String {
        format!("`tether groups show {}` and `tether groups members {}`", self.id, self.id)
    }
}
