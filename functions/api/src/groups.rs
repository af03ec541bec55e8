//! The `/groups` routes: each change is written, then the group's controller runs once
//! within the action budget; the answer is the group as its members make it then (200 once
//! they are as it says, 202 while the controller is still bringing them there).

use lambda_http::http::{header, StatusCode};
use tether::group::GroupId;
use tether::views::{CreateGroup, DeallocateGroup, GroupList, GroupMember, GroupMembers, GroupPatch, GroupView, NodeView, Scale};
use tether::{Node, NodeState, TetherError};

use crate::problem::{from_error, json, problem};
use crate::routes::Operation;
use crate::{page_of, parse, query_param, Answer, Api, Call};

impl Api {
    pub(crate) async fn groups(&self, call: &Call<'_>) -> Answer {
        let by = Some(call.caller);
        let group_id = match call.id.map(GroupId::parse) {
            Some(None) => return problem(StatusCode::NOT_FOUND, "group-not-found", format!("no group {}", call.id.unwrap_or_default()), None),
            Some(Some(id)) => Some(id),
            None => None,
        };
        let changed = match (call.route.operation, group_id) {
            (Operation::ListGroups, _) => return self.list_groups(call.query).await,
            (Operation::CreateGroup, _) => {
                let request: CreateGroup = match parse(call.body, call.route) {
                    Ok(r) => r,
                    Err(answer) => return *answer,
                };
                match self.tether.create_group(request, by).await {
                    Ok(group) => {
                        self.run(&group.id).await;
                        let mut answer = self.show_group(&group.id, Some(StatusCode::CREATED)).await;
                        if let Ok(location) = format!("/groups/{}", group.id).parse() {
                            answer.headers_mut().insert(header::LOCATION, location);
                        }
                        return answer;
                    }
                    Err(e) => return from_error(&e),
                }
            }
            (Operation::GetGroup, Some(id)) => return self.show_group(&id, Some(StatusCode::OK)).await,
            (Operation::GroupMembers, Some(id)) => return self.members(&id).await,
            (Operation::PatchGroup, Some(id)) => match parse::<GroupPatch>(call.body, call.route) {
                Ok(patch) => self.tether.patch_group(&id, &patch, by).await,
                Err(answer) => return *answer,
            },
            (Operation::ScaleGroup, Some(id)) => match parse::<Scale>(call.body, call.route) {
                Ok(scale) => self.tether.scale_group(&id, scale.target_capacity, by).await,
                Err(answer) => return *answer,
            },
            (Operation::PauseGroup, Some(id)) => self.tether.pause_group(&id, by).await,
            (Operation::ResumeGroup, Some(id)) => self.tether.resume_group(&id, by).await,
            (Operation::RecycleGroup, Some(id)) => self.tether.recycle_group(&id, by).await,
            (Operation::DeallocateGroup, Some(id)) => match parse::<DeallocateGroup>(call.body, call.route) {
                Ok(options) => self.tether.deallocate_group(&id, options.keep_enis, by).await,
                Err(answer) => return *answer,
            },
            (Operation::DeleteGroup, Some(id)) => match query_param(call.query, "keep_enis").as_deref() {
                None | Some("false") => self.tether.deallocate_group(&id, false, by).await,
                Some("true") => self.tether.deallocate_group(&id, true, by).await,
                Some(other) => {
                    return problem(StatusCode::BAD_REQUEST, "invalid-parameter", format!("keep_enis must be true or false, not `{other}`"), Some("keep_enis"))
                }
            },
            _ => return problem(StatusCode::NOT_FOUND, "no-route", "this route needs a group id", None),
        };
        match changed {
            Ok(group) => {
                self.run(&group.id).await;
                self.show_group(&group.id, None).await
            }
            Err(e) => from_error(&e),
        }
    }

    /// One run of the group's controller; what it leaves, the reconciler carries on.
    async fn run(&self, id: &GroupId) {
        let deadline = self.tether.deadline_in(self.action_budget);
        if let Err(e) = Box::pin(self.tether.run_group(id, deadline)).await {
            tracing::warn!(group_id = %id, error = %e, "group run did not finish; the reconciler carries it on");
        }
    }

    async fn list_groups(&self, query: &str) -> Answer {
        let (limit, start_after) = match page_of(query, GroupId::parse) {
            Ok(page) => page,
            Err(answer) => return *answer,
        };
        let (groups, next) = match self.tether.groups(limit, start_after.as_ref()).await {
            Ok(page) => page,
            Err(e) => return from_error(&e),
        };
        let mut views = Vec::new();
        for group in groups {
            match self.tether.group_status(&group.id).await {
                Ok((group, _, status)) => views.push(GroupView::of(&group, status)),
                Err(e) => return from_error(&e),
            }
        }
        json(StatusCode::OK, &GroupList { groups: views, next_token: next.map(|id| id.to_string()) })
    }

    /// The group; with `status`, or after a change (`None`): 200 once the group has nothing
    /// left to do (`status.settled`), 202 while its members are being brought there.
    async fn show_group(&self, id: &GroupId, status: Option<StatusCode>) -> Answer {
        match self.tether.group_status(id).await {
            Ok((group, _, group_status)) => {
                let status = status.unwrap_or(if group_status.settled { StatusCode::OK } else { StatusCode::ACCEPTED });
                json(status, &GroupView::of(&group, group_status))
            }
            Err(e) => from_error(&e),
        }
    }

    async fn members(&self, id: &GroupId) -> Answer {
        match self.tether.group_status(id).await {
            Ok((group, mut members, _)) => {
                members.sort_by_key(|m| {
                    let g = m.group.as_ref();
                    let rank = g.and_then(|g| g.pool_ip).and_then(|ip| group.private_ip_pool.iter().position(|p| *p == ip));
                    (g.and_then(|g| g.pool_ip).is_none(), rank, g.map(|g| g.ordinal))
                });
                let pool_full = |m: &Node| elastic_ip_note(&group.elastic_ip_pool, m);
                let members = members
                    .iter()
                    .map(|m| GroupMember { node: NodeView::from(m), pool_ip: m.group.as_ref().and_then(|g| g.pool_ip), held: group.holds(m), elastic_ip_note: pool_full(m) })
                    .collect();
                json(StatusCode::OK, &GroupMembers { group_id: group.id.clone(), members })
            }
            Err(e @ TetherError::GroupNotFound(_)) => from_error(&e),
            Err(e) => from_error(&e),
        }
    }
}

/// Why a live member has no Elastic IP, when its group has an Elastic-IP pool.
fn elastic_ip_note(pool: &[String], member: &Node) -> Option<String> {
    if pool.is_empty() || member.elastic_ip.is_some() || member.persistence.elastic_ip_allocation_id.is_some() || member.state == NodeState::Deallocated {
        return None;
    }
    Some(if member.generation == 0 {
        "none yet: it takes a free Elastic IP of the pool at its first resume".to_owned()
    } else {
        "none: every Elastic IP of the pool was held by another member when it was resumed; running members are never re-addressed".to_owned()
    })
}
