//! The API's routes: one table, used both to dispatch requests and to write the OpenAPI
//! document, so the two cannot drift apart.

use lambda_http::http::Method;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    ListNodes,
    CreateNode,
    ImportNode,
    GetNode,
    PatchNode,
    DeleteNode,
    NodeHistory,
    PauseNode,
    ResumeNode,
    RecycleNode,
    DeallocateNode,
    ListGroups,
    CreateGroup,
    GetGroup,
    PatchGroup,
    DeleteGroup,
    GroupMembers,
    PauseGroup,
    ResumeGroup,
    RecycleGroup,
    ScaleGroup,
    DeallocateGroup,
}

/// What a route accepts and answers, for the OpenAPI document.
#[derive(Clone, Debug)]
pub struct Route {
    pub method: Method,
    /// With `{id}` for the node id (`/nodes/…`) or the group id (`/groups/…`).
    pub path: &'static str,
    pub operation: Operation,
    pub operation_id: &'static str,
    pub summary: &'static str,
    /// The request body's schema name, if the route takes one (`true`: required).
    pub body: Option<(&'static str, bool)>,
    /// Query parameters: (name, schema type, description).
    pub query: &'static [(&'static str, &'static str, &'static str)],
    /// Success statuses and the schema of their body.
    pub success: &'static [(u16, &'static str)],
    /// Error statuses answered as problem+json.
    pub errors: &'static [u16],
}

/// Errors every route can answer: not authenticated, a body too large (checked on every
/// route), AWS throttled or faulted.
pub const COMMON_ERRORS: &[u16] = &[403, 413, 503];

const NODE_ACTION_ERRORS: &[u16] = &[400, 404, 409, 422];

/// A POST on a group: a bad or reused Idempotency-Key (400, 422) besides the rest.
const GROUP_ACTION_ERRORS: &[u16] = &[400, 404, 409, 422];

/// A group changed: 200 once its members are as it says, 202 while they are being brought there.
const GROUP_CHANGED: &[(u16, &str)] = &[(200, "GroupView"), (202, "GroupView")];

pub const ROUTES: &[Route] = &[
    Route {
        method: Method::GET,
        path: "/nodes",
        operation: Operation::ListNodes,
        operation_id: "listNodes",
        summary: "List nodes, a page at a time",
        body: None,
        query: &[
            ("limit", "integer", "Nodes per page, 1 to 100 (default 25)"),
            ("next_token", "string", "The `next_token` of the previous page"),
        ],
        success: &[(200, "NodeList")],
        errors: &[400],
    },
    Route {
        method: Method::POST,
        path: "/nodes",
        operation: Operation::CreateNode,
        operation_id: "createNode",
        summary: "Create a node (paused unless `resume` is true)",
        body: Some(("CreateNode", true)),
        query: &[],
        success: &[(201, "NodeView")],
        errors: &[400, 409, 422],
    },
    Route {
        method: Method::POST,
        path: "/nodes/import",
        operation: Operation::ImportNode,
        operation_id: "importNode",
        summary: "Adopt a running instance as a node, keeping its private IP and Elastic IP",
        body: Some(("ImportRequest", true)),
        query: &[],
        success: &[(201, "NodeView")],
        errors: &[400, 409, 422],
    },
    Route {
        method: Method::GET,
        path: "/nodes/{id}",
        operation: Operation::GetNode,
        operation_id: "getNode",
        summary: "A node's state, instance and network identity",
        body: None,
        query: &[],
        success: &[(200, "NodeView")],
        errors: &[404],
    },
    Route {
        method: Method::PATCH,
        path: "/nodes/{id}",
        operation: Operation::PatchNode,
        operation_id: "patchNode",
        summary: "Change launch settings; they take effect at the next launch",
        body: Some(("NodePatch", true)),
        query: &[],
        success: &[(200, "NodeView")],
        errors: &[400, 404, 409, 422],
    },
    Route {
        method: Method::DELETE,
        path: "/nodes/{id}",
        operation: Operation::DeleteNode,
        operation_id: "deleteNode",
        summary: "Deallocate the node (as POST /nodes/{id}/deallocate)",
        body: None,
        query: &[("keep_eni", "boolean", "Keep the ENI and its Elastic IP (default false)")],
        success: &[(200, "NodeView"), (202, "NodeView")],
        errors: &[400, 404, 409, 422],
    },
    Route {
        method: Method::GET,
        path: "/nodes/{id}/history",
        operation: Operation::NodeHistory,
        operation_id: "nodeHistory",
        summary: "What happened to the node, and who asked",
        body: None,
        query: &[],
        success: &[(200, "NodeHistory")],
        errors: &[404],
    },
    Route {
        method: Method::POST,
        path: "/nodes/{id}/pause",
        operation: Operation::PauseNode,
        operation_id: "pauseNode",
        summary: "Terminate the instance; keep the ENI and Elastic IP",
        body: None,
        query: &[],
        success: &[(200, "NodeView")],
        errors: NODE_ACTION_ERRORS,
    },
    Route {
        method: Method::POST,
        path: "/nodes/{id}/resume",
        operation: Operation::ResumeNode,
        operation_id: "resumeNode",
        summary: "Launch an instance on the node's ENI (created at the first resume)",
        body: None,
        query: &[],
        success: &[(200, "NodeView"), (202, "NodeView")],
        errors: NODE_ACTION_ERRORS,
    },
    Route {
        method: Method::POST,
        path: "/nodes/{id}/recycle",
        operation: Operation::RecycleNode,
        operation_id: "recycleNode",
        summary: "Replace the instance by a new one on the same ENI",
        body: None,
        query: &[],
        success: &[(200, "NodeView"), (202, "NodeView")],
        errors: NODE_ACTION_ERRORS,
    },
    Route {
        method: Method::POST,
        path: "/nodes/{id}/deallocate",
        operation: Operation::DeallocateNode,
        operation_id: "deallocateNode",
        summary: "Terminate the instance, delete the ENI, release or disassociate the Elastic IP",
        body: Some(("Deallocate", false)),
        query: &[],
        success: &[(200, "NodeView"), (202, "NodeView")],
        errors: &[400, 404, 409, 422],
    },
    Route {
        method: Method::GET,
        path: "/groups",
        operation: Operation::ListGroups,
        operation_id: "listGroups",
        summary: "List stateful groups, a page at a time",
        body: None,
        query: &[
            ("limit", "integer", "Groups per page, 1 to 100 (default 25)"),
            ("next_token", "string", "The `next_token` of the previous page"),
        ],
        success: &[(200, "GroupList")],
        errors: &[400],
    },
    Route {
        method: Method::POST,
        path: "/groups",
        operation: Operation::CreateGroup,
        operation_id: "createGroup",
        summary: "Create a stateful group: its pool addresses are reserved, one paused member is made per pool address, and the target is resumed",
        body: Some(("CreateGroup", true)),
        query: &[],
        success: &[(201, "GroupView")],
        errors: &[400, 409, 422],
    },
    Route {
        method: Method::GET,
        path: "/groups/{id}",
        operation: Operation::GetGroup,
        operation_id: "getGroup",
        summary: "A group, its pools, and what its members make of it (counts, and why it is below target)",
        body: None,
        query: &[],
        success: &[(200, "GroupView")],
        errors: &[404],
    },
    Route {
        method: Method::PATCH,
        path: "/groups/{id}",
        operation: Operation::PatchGroup,
        operation_id: "patchGroup",
        summary: "Change a group's template, target, pools, subnets, name or settings",
        body: Some(("GroupPatch", true)),
        query: &[],
        success: GROUP_CHANGED,
        errors: &[400, 404, 409, 422],
    },
    Route {
        method: Method::DELETE,
        path: "/groups/{id}",
        operation: Operation::DeleteGroup,
        operation_id: "deleteGroup",
        summary: "Deallocate the group (as POST /groups/{id}/deallocate)",
        body: None,
        query: &[("keep_enis", "boolean", "Keep every member's ENI (default false)")],
        success: GROUP_CHANGED,
        errors: &[400, 404, 409],
    },
    Route {
        method: Method::GET,
        path: "/groups/{id}/members",
        operation: Operation::GroupMembers,
        operation_id: "groupMembers",
        summary: "Every member of the group, pool members first",
        body: None,
        query: &[],
        success: &[(200, "GroupMembers")],
        errors: &[404],
    },
    Route {
        method: Method::POST,
        path: "/groups/{id}/pause",
        operation: Operation::PauseGroup,
        operation_id: "pauseGroup",
        summary: "Pause every member (the target is kept)",
        body: None,
        query: &[],
        success: GROUP_CHANGED,
        errors: GROUP_ACTION_ERRORS,
    },
    Route {
        method: Method::POST,
        path: "/groups/{id}/resume",
        operation: Operation::ResumeGroup,
        operation_id: "resumeGroup",
        summary: "Resume the group and clear every hold",
        body: None,
        query: &[],
        success: GROUP_CHANGED,
        errors: GROUP_ACTION_ERRORS,
    },
    Route {
        method: Method::POST,
        path: "/groups/{id}/recycle",
        operation: Operation::RecycleGroup,
        operation_id: "recycleGroup",
        summary: "Rolling recycle: every running member on a new instance, max_unavailable at a time",
        body: None,
        query: &[],
        success: GROUP_CHANGED,
        errors: GROUP_ACTION_ERRORS,
    },
    Route {
        method: Method::POST,
        path: "/groups/{id}/scale",
        operation: Operation::ScaleGroup,
        operation_id: "scaleGroup",
        summary: "Set the target capacity (up: paused members first; down: members are paused, keeping their identity)",
        body: Some(("Scale", true)),
        query: &[],
        success: GROUP_CHANGED,
        errors: &[400, 404, 409, 422],
    },
    Route {
        method: Method::POST,
        path: "/groups/{id}/deallocate",
        operation: Operation::DeallocateGroup,
        operation_id: "deallocateGroup",
        summary: "Deallocate every member, then the group (refused while deletion_protection is on)",
        body: Some(("DeallocateGroup", false)),
        query: &[],
        success: GROUP_CHANGED,
        errors: GROUP_ACTION_ERRORS,
    },
];

/// Why no route takes a request.
#[derive(Debug, PartialEq, Eq)]
pub enum NoRoute {
    NotFound,
    /// The path exists with these methods.
    MethodNotAllowed(Vec<Method>),
}

/// The route for a request, and the node id in its path if it has one.
pub fn find<'p>(method: &Method, path: &'p str) -> Result<(&'static Route, Option<&'p str>), NoRoute> {
    let mut allowed = Vec::new();
    for route in ROUTES {
        if let Some(id) = matches(route.path, path) {
            if route.method == *method {
                return Ok((route, id));
            }
            allowed.push(route.method.clone());
        }
    }
    if allowed.is_empty() {
        Err(NoRoute::NotFound)
    } else {
        Err(NoRoute::MethodNotAllowed(allowed))
    }
}

/// The prefix of the ids an `{id}` segment of `template` takes: nodes' or groups'.
pub fn id_prefix(template: &str) -> &'static str {
    if template.starts_with("/groups") {
        "tg-"
    } else {
        "tn-"
    }
}

/// `Some(id)` if `path` fits `template` (`Some(None)` for templates without `{id}`). An
/// `{id}` segment takes only what looks like a node (or group) id, so `/nodes/import` is
/// never a node.
fn matches<'p>(template: &str, path: &'p str) -> Option<Option<&'p str>> {
    let path = path.strip_suffix('/').filter(|p| !p.is_empty()).unwrap_or(path);
    let (mut t, mut p) = (template.split('/'), path.split('/'));
    let prefix = id_prefix(template);
    let mut id = None;
    loop {
        match (t.next(), p.next()) {
            (None, None) => return Some(id),
            (Some("{id}"), Some(segment)) if segment.starts_with(prefix) => id = Some(segment),
            (Some(a), Some(b)) if a == b => {}
            _ => return None,
        }
    }
}
