//! `tether`: the operators' command-line client of Tether's management API.
//!
//! Requests are SigV4-signed for API Gateway (service `execute-api`) with credentials from
//! the standard AWS chain. The library runs one command line in-process ([`run`]), so the
//! tests drive it against the local API exactly as the binary does.

mod args;
mod groups;
mod http;
mod output;
mod wait;

use std::ffi::OsString;
use std::io::Write;
use std::time::Duration;

use aws_credential_types::provider::ProvideCredentials;
use aws_credential_types::Credentials;
use clap::Parser;
use hyper::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde_json::Value;
use tether::group::MemberTemplate;
use tether::launch_options::{Placement, Tenancy};
use tether::lifecycle::NodePatch;
use tether::model::{HttpTokens, MetadataOptions, NodeSpec, Persistence};
use tether::network_identity::AddressRequest;
use tether::views::{CreateNode, Deallocate, NodeHistory, NodeList, Problem};
use tether::ImportRequest;

pub use args::{
    Cli, CommaList, Command, CreateArgs, DataVolumeArgs, DeallocationArgs, DeallocationChangeArgs, DeallocationChanges, EniPolicy, GroupActionArgs, HealingArgs, HealingChangeArgs, HealingChanges, MaxHeals, ScheduleArgs, IdentityChangeArgs, GroupCreateArgs, GroupUpdateArgs, GroupWaitArgs, GroupsCommand, LaunchArgs, LaunchChangeArgs, NodesCommand, PostArgs,
    UpdateArgs, WaitArgs,
};
pub use http::{Endpoint, RetryPolicy, SIGNING_NAME};
pub use output::state_name;

/// The environment variable naming the API's URL when `--endpoint` is not given.
pub const API_URL_VARIABLE: &str = "TETHER_API_URL";
/// The Region used when neither `--region` nor the AWS configuration names one.
pub const DEFAULT_REGION: &str = "us-east-1";

/// What the process environment contributes. Tests build one by hand, so that parallel
/// tests need no process-wide variables.
#[derive(Clone, Debug)]
pub struct Environment {
    /// `TETHER_API_URL`.
    pub api_url: Option<String>,
    /// The Region when `--region` is not given; `None`: the AWS configuration's, else us-east-1.
    pub region: Option<String>,
    /// Credentials to sign with; `None`: the standard AWS chain (environment variables,
    /// profiles, web identity, ECS and EC2 instance metadata).
    pub credentials: Option<Credentials>,
    /// How often `--wait` asks for the node or group.
    pub poll_interval: Duration,
    pub retry: RetryPolicy,
}

impl Environment {
    /// The real process's environment: `TETHER_API_URL`; credentials and Region from the AWS chain.
    pub fn from_process() -> Environment {
        Environment { api_url: std::env::var(API_URL_VARIABLE).ok().filter(|u| !u.trim().is_empty()), ..Environment::default() }
    }
}

impl Default for Environment {
    fn default() -> Self {
        Environment {
            api_url: None,
            region: None,
            credentials: None,
            poll_interval: Duration::from_secs(2),
            retry: RetryPolicy { attempts: 4, base_delay: Duration::from_millis(500) },
        }
    }
}

/// Why a command failed.
#[derive(Debug)]
pub enum CliError {
    /// The command line or configuration cannot work (exit code 2).
    Usage(String),
    /// Local set-up failed: credentials, certificates, files.
    Config(String),
    /// The API could not be reached, or did not answer.
    Transport(String),
    /// The API answered with an error.
    Api { status: StatusCode, problem: Option<Box<Problem>>, body: bytes::Bytes },
    /// The command ran but did not reach its goal (a wait timed out, the node went to error).
    Failed(String),
}

impl CliError {
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::Usage(_) => 2,
            _ => 1,
        }
    }
}

/// One command line's result, as captured by [`run_captured`].
#[derive(Clone, Debug)]
pub struct Captured {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs one command line (`args` includes the program name); returns the exit code:
/// 0 done, 1 failed, 2 usage error.
pub async fn run<I, T>(args: I, env: &Environment, out: &mut (dyn Write + Send), err: &mut (dyn Write + Send)) -> i32
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    let cli = match Cli::try_parse_from(&args) {
        Ok(cli) => cli,
        Err(e) => {
            let text = e.render().to_string();
            let _ = if e.use_stderr() { err.write_all(text.as_bytes()) } else { out.write_all(text.as_bytes()) };
            // `--schedule pause 0 20 * * 1-5` unquoted: the cron's fields came as arguments.
            if e.kind() == clap::error::ErrorKind::UnknownArgument && args.iter().any(|a| a == "--schedule") {
                let _ = writeln!(err, "hint: give each --schedule as one quoted argument, e.g. --schedule 'pause 0 20 * * 1-5 Europe/Paris'");
            }
            return e.exit_code();
        }
    };
    let json = cli.json;
    match execute(cli, env, out, err).await {
        Ok(()) => 0,
        Err(e) => {
            report(&e, json, out, err);
            e.exit_code()
        }
    }
}

/// [`run`] with its output captured.
pub async fn run_captured<I, T>(args: I, env: &Environment) -> Captured
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = run(args, env, &mut out, &mut err).await;
    Captured { code, stdout: String::from_utf8_lossy(&out).into_owned(), stderr: String::from_utf8_lossy(&err).into_owned() }
}

fn report(e: &CliError, json: bool, out: &mut (dyn Write + Send), err: &mut (dyn Write + Send)) {
    match e {
        CliError::Usage(why) | CliError::Config(why) | CliError::Transport(why) | CliError::Failed(why) => {
            let _ = writeln!(err, "error: {why}");
        }
        CliError::Api { status, problem: Some(problem), body } => {
            if json {
                let _ = writeln!(out, "{}", output::pretty(body));
            }
            let detail = if problem.detail.is_empty() { &problem.title } else { &problem.detail };
            let _ = writeln!(err, "error: {detail}");
            if let Some(field) = &problem.field {
                let _ = writeln!(err, "field: {field}");
            }
            if let Some(code) = &problem.aws_code {
                let _ = writeln!(err, "aws code: {code}");
            }
            if *status == StatusCode::FORBIDDEN {
                let _ = writeln!(err, "hint: {FORBIDDEN_HINT}");
            }
        }
        CliError::Api { status, problem: None, body } => {
            // API Gateway's own answers are `{"message": "..."}`.
            let message = serde_json::from_slice::<Value>(body)
                .ok()
                .and_then(|v| v.get("message").or_else(|| v.get("Message")).and_then(Value::as_str).map(str::to_owned))
                .unwrap_or_else(|| String::from_utf8_lossy(body).chars().take(500).collect());
            let reason = status.canonical_reason().unwrap_or("");
            let _ = writeln!(err, "error: HTTP {} {reason}: {}", status.as_u16(), message.trim());
            if *status == StatusCode::FORBIDDEN {
                let _ = writeln!(err, "hint: {FORBIDDEN_HINT}");
            }
        }
    }
}

const FORBIDDEN_HINT: &str = "the API did not accept the request's signature or identity: check the credentials \
(AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, AWS_PROFILE or --profile), that --region is the API's Region, \
and that the identity may call execute-api:Invoke on this API";

/// The client, once the endpoint, Region and credentials are known.
struct Session<'a> {
    client: http::ApiClient,
    env: &'a Environment,
    json: bool,
}

async fn execute(cli: Cli, env: &Environment, out: &mut (dyn Write + Send), err: &mut (dyn Write + Send)) -> Result<(), CliError> {
    let Cli { endpoint, region: region_flag, profile, json, command } = cli;
    // Everything local is checked before credentials are looked up.
    let request = match &command {
        Command::Nodes(nodes) => plan(nodes)?,
        Command::Groups(groups) => groups::plan(groups)?,
    };
    let raw_endpoint = endpoint.or_else(|| env.api_url.clone()).ok_or_else(|| {
        CliError::Usage(format!("no API endpoint: pass --endpoint URL or set {API_URL_VARIABLE}"))
    })?;
    let endpoint = Endpoint::parse(&raw_endpoint).map_err(|why| CliError::Usage(format!("--endpoint / {API_URL_VARIABLE}: {why}")))?;
    let region = region(region_flag, profile.as_deref(), env).await;
    let credentials = credentials(profile.as_deref(), env, &region).await?;
    let client = http::ApiClient::new(endpoint, region, credentials, env.retry)?;
    let session = Session { client, env, json };
    match command {
        Command::Nodes(nodes) => session.perform(nodes, request, out, err).await,
        Command::Groups(groups) => session.perform_group(groups, request, out, err).await,
    }
}

async fn region(flag: Option<String>, profile: Option<&str>, env: &Environment) -> String {
    if let Some(region) = flag.or_else(|| env.region.clone()) {
        return region;
    }
    let mut chain = aws_config::default_provider::region::DefaultRegionChain::builder();
    if let Some(profile) = profile {
        chain = chain.profile_name(profile);
    }
    match chain.build().region().await {
        Some(region) => region.to_string(),
        None => DEFAULT_REGION.to_owned(),
    }
}

async fn credentials(profile: Option<&str>, env: &Environment, region: &str) -> Result<Credentials, CliError> {
    if let Some(credentials) = &env.credentials {
        return Ok(credentials.clone());
    }
    let mut chain = aws_config::default_provider::credentials::DefaultCredentialsChain::builder()
        .region(aws_config::Region::new(region.to_owned()));
    if let Some(profile) = profile {
        chain = chain.profile_name(profile);
    }
    chain.build().await.provide_credentials().await.map_err(|e| {
        let mut why = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            why.push_str(": ");
            why.push_str(&s.to_string());
            source = s.source();
        }
        CliError::Config(format!(
            "no AWS credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or use a profile \
             (AWS_PROFILE or --profile) with static keys or a role; SSO and credential_process profiles \
             are not supported by this build ({why})"
        ))
    })
}

/// The first request of a command, built from the command line alone.
struct Planned {
    method: Method,
    path: String,
    body: Option<Vec<u8>>,
    /// POSTs carry an Idempotency-Key.
    idempotency_key: Option<String>,
    /// `--wait`: how long.
    wait: Option<Duration>,
}

impl Planned {
    fn get(path: String) -> Planned {
        Planned { method: Method::GET, path, body: None, idempotency_key: None, wait: None }
    }

    fn post(path: String, body: Option<Vec<u8>>, post: &PostArgs, wait: Option<Duration>) -> Planned {
        let key = post.idempotency_key.clone().unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        Planned { method: Method::POST, path, body, idempotency_key: Some(key), wait }
    }

    fn patch(path: String, body: Vec<u8>, wait: Option<Duration>) -> Planned {
        Planned { method: Method::PATCH, path, body: Some(body), idempotency_key: None, wait }
    }
}

fn plan(command: &NodesCommand) -> Result<Planned, CliError> {
    let node_path = |id: &str, action: &str| format!("/nodes/{}{action}", http::encode(id));
    let post = Planned::post;
    Ok(match command {
        NodesCommand::List { limit, .. } => Planned::get(list_path("/nodes", *limit, None)),
        NodesCommand::Show { id } => Planned::get(node_path(id, "")),
        NodesCommand::History { id } => Planned::get(node_path(id, "/history")),
        NodesCommand::Pause { id, post: p } => post(node_path(id, "/pause"), None, p, None),
        NodesCommand::Resume { id, wait, post: p } => post(node_path(id, "/resume"), None, p, wait.timeout()),
        NodesCommand::Recycle { id, wait, post: p } => post(node_path(id, "/recycle"), None, p, wait.timeout()),
        NodesCommand::Deallocate { id, keep_eni, wait, post: p } => {
            let body = to_json(&Deallocate { keep_eni: *keep_eni })?;
            post(node_path(id, "/deallocate"), Some(body), p, wait.timeout())
        }
        NodesCommand::Import { instance_id, instance_types, no_on_demand_fallback, revert_to_spot, keep_volumes, wait, post: p } => {
            let body = ImportRequest {
                instance_id: instance_id.clone(),
                instance_types: Some(instance_types.clone()).filter(|t| !t.is_empty()),
                fallback_to_on_demand: no_on_demand_fallback.then_some(false),
                revert_to_spot: *revert_to_spot,
                keep_volumes: *keep_volumes,
            };
            post("/nodes/import".to_owned(), Some(to_json(&body)?), p, wait.timeout())
        }
        // With deallocation or auto-healing changes, `perform` reads the node's policies first
        // and sends them back changed.
        NodesCommand::Update(args) => Planned::patch(node_path(&args.id, ""), to_json(&update_patch(args, None)?)?, None),
        NodesCommand::Create(args) => {
            let (identity, options) = (&args.identity, &args.options);
            let request = CreateNode {
                spec: NodeSpec {
                    secondary_private_ips: addresses(identity.secondary_ip_count, &identity.secondary_ips),
                    ipv6: addresses(identity.ipv6_count, &[]),
                    source_dest_check: !identity.no_source_dest_check,
                    public_ip_assignment: identity.public_ip.unwrap_or_default(),
                    eni_tags: identity.eni_tags.iter().cloned().collect(),
                    extra_enis: options.extra_enis.clone(),
                    ebs_optimized: options.ebs_optimized.then_some(true),
                    detailed_monitoring: options.detailed_monitoring.then_some(true),
                    cpu_credits: options.cpu_credits,
                    placement: (options.placement_group.is_some() || options.dedicated).then(|| Placement {
                        group_name: options.placement_group.clone(),
                        tenancy: if options.dedicated { Tenancy::Dedicated } else { Tenancy::Default },
                    }),
                    spot_max_price: options.spot_max_price.clone(),
                    capacity_reservation: options.capacity_reservation.clone(),
                    volume_tags: options.volume_tags.iter().cloned().collect(),
                    data_volumes: args.data.volumes(),
                    deallocation: args.deallocation.policy(),
                    auto_healing: args.healing.policy(),
                    maintenance_window: args.healing.maintenance_window,
                    schedules: args.schedules.schedules.clone(),
                    ..template(&args.launch)?.spec_in(&args.subnet)
                },
                persistence: Persistence {
                    private_ip: args.private_ip,
                    elastic_ip_allocation_id: args.elastic_ip.clone(),
                    allocate_elastic_ip: args.allocate_elastic_ip,
                },
                resume: args.resume,
            };
            post("/nodes".to_owned(), Some(to_json(&request)?), &args.post, args.wait.timeout())
        }
    })
}

/// The launch settings of `nodes create` and `groups create`.
fn template(args: &LaunchArgs) -> Result<MemberTemplate, CliError> {
    Ok(MemberTemplate {
        image_id: args.image.clone().unwrap_or_default(),
        instance_types: args.instance_types.clone(),
        security_group_ids: args.security_groups.clone(),
        key_name: args.key_name.clone(),
        iam_instance_profile: args.instance_profile.clone(),
        user_data: read_user_data(args.user_data_file.as_deref())?,
        tags: args.tags.iter().cloned().collect(),
        fallback_to_on_demand: !args.no_on_demand_fallback,
        revert_to_spot: args.revert_to_spot,
        // Nothing given: the API's default (IMDSv2 required).
        metadata_options: metadata_options(args.imds_v1, args.imds_v1 || args.metadata_hop_limit.is_some(), args.metadata_hop_limit),
        block_devices: args.block_devices.clone(),
        handover_after_warning_seconds: args.handover_after_warning,
        launch_template: args.launch_template.clone(),
        ..MemberTemplate::of_spec(NodeSpec::default())
    })
}

/// Metadata settings from the flags, when `given`; the ones not given take their defaults.
fn metadata_options(imds_v1: bool, given: bool, hop_limit: Option<u8>) -> Option<MetadataOptions> {
    let defaults = MetadataOptions::default();
    given.then(|| MetadataOptions {
        http_tokens: if imds_v1 { HttpTokens::Optional } else { HttpTokens::Required },
        http_put_response_hop_limit: hop_limit.unwrap_or(defaults.http_put_response_hop_limit),
        ..defaults
    })
}

/// The launch settings `nodes update` and `groups update` change (the others left out).
fn launch_patch(args: &LaunchChangeArgs) -> Result<NodePatch, CliError> {
    Ok(NodePatch {
        image_id: args.image.clone(),
        instance_types: Some(args.instance_types.clone()).filter(|t| !t.is_empty()),
        user_data: read_user_data(args.user_data_file.as_deref())?,
        tags: (args.no_tags || !args.tags.is_empty()).then(|| args.tags.iter().cloned().collect()),
        fallback_to_on_demand: match (args.on_demand_fallback, args.no_on_demand_fallback) {
            (true, _) => Some(true),
            (_, true) => Some(false),
            _ => None,
        },
        revert_to_spot: args.revert_to_spot,
        key_name: args.key_name.clone(),
        iam_instance_profile: args.instance_profile.clone(),
        metadata_options: metadata_options(args.imds_v1, args.imds_v1 || args.imds_v2_only || args.metadata_hop_limit.is_some(), args.metadata_hop_limit),
        block_devices: (args.no_block_devices || !args.block_devices.is_empty()).then(|| args.block_devices.clone()),
        handover_after_warning_seconds: args.handover_after_warning.map(|h| h.0),
        launch_template: args.launch_template.clone().map(Some).or_else(|| args.no_launch_template.then_some(None)),
        spot_max_price: args.spot_max_price.as_deref().map(|p| (p != "off").then(|| p.to_owned())),
        capacity_reservation: args
            .capacity_reservation
            .as_deref()
            .map(|c| if c == "off" { Ok(None) } else { args::parse_capacity_reservation(c).map(Some) })
            .transpose()
            .map_err(|e| CliError::Usage(format!("--capacity-reservation {e}")))?,
        ..NodePatch::default()
    })
}

/// What `nodes update` sends: the launch settings, the ENI changes, the maintenance window
/// and schedules given, and the whole deallocation policy or auto-healing settings when one
/// of their fields changes (`current`: the node's spec, as read).
fn update_patch(args: &UpdateArgs, current: Option<&NodeSpec>) -> Result<NodePatch, CliError> {
    let patch = identity_patch(&args.identity, launch_patch(&args.launch)?);
    let deallocation = args.deallocation.changes().zip(current).map(|(changes, spec)| changes.apply(spec.deallocation));
    let auto_healing = args.healing.changes().zip(current).map(|(changes, spec)| changes.apply(spec.auto_healing));
    Ok(NodePatch { deallocation, auto_healing, maintenance_window: args.healing.maintenance_window(), schedules: args.healing.schedules(), ..patch })
}

/// Whether `nodes update` must read the node first: the PATCH replaces whole policies.
fn reads_first(args: &UpdateArgs) -> bool {
    args.deallocation.changes().is_some() || args.healing.changes().is_some()
}

/// The ENI changes of `nodes update`, added to `patch`.
fn identity_patch(args: &IdentityChangeArgs, patch: NodePatch) -> NodePatch {
    NodePatch {
        secondary_private_ips: addresses(args.secondary_ip_count, &args.secondary_ips).or_else(|| args.no_secondary_ips.then(none)),
        ipv6: addresses(args.ipv6_count, &[]).or_else(|| args.no_ipv6.then(none)),
        source_dest_check: args.source_dest_check,
        public_ip_assignment: args.public_ip,
        eni_tags: (args.no_eni_tags || !args.eni_tags.is_empty()).then(|| args.eni_tags.iter().cloned().collect()),
        ..patch
    }
}

/// No addresses (`{}`): a PATCH's "none".
fn none<A>() -> AddressRequest<A> {
    AddressRequest { count: None, addresses: Vec::new() }
}

/// A count or a list of addresses, if either is given.
fn addresses<A: Clone>(count: Option<u8>, listed: &[A]) -> Option<AddressRequest<A>> {
    (count.is_some() || !listed.is_empty()).then(|| AddressRequest { count, addresses: listed.to_vec() })
}

fn read_user_data(file: Option<&std::path::Path>) -> Result<Option<String>, CliError> {
    file.map(|path| {
        std::fs::read_to_string(path)
            .map_err(|e| CliError::Usage(format!("--user-data-file {}: {e} (user data must be a UTF-8 text file)", path.display())))
    })
    .transpose()
}

/// `base` (`/nodes`, `/groups`) with the page's query.
fn list_path(base: &str, limit: Option<u32>, next_token: Option<&str>) -> String {
    let mut query = Vec::new();
    if let Some(limit) = limit {
        query.push(format!("limit={limit}"));
    }
    if let Some(token) = next_token {
        query.push(format!("next_token={}", http::encode(token)));
    }
    if query.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", query.join("&"))
    }
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, CliError> {
    serde_json::to_vec(value).map_err(|e| CliError::Config(format!("cannot write the request body: {e}")))
}

/// One page of a list the API answers a page at a time.
trait Page: output::Shown + DeserializeOwned + serde::Serialize {
    fn next_token(&self) -> Option<&str>;
    /// Adds the next page's items, and takes its `next_token`.
    fn append(&mut self, next: Self);
}

impl Page for NodeList {
    fn next_token(&self) -> Option<&str> {
        self.next_token.as_deref()
    }

    fn append(&mut self, next: Self) {
        self.nodes.extend(next.nodes);
        self.next_token = next.next_token;
    }
}

impl Session<'_> {
    async fn perform(&self, command: NodesCommand, request: Planned, out: &mut (dyn Write + Send), err: &mut (dyn Write + Send)) -> Result<(), CliError> {
        match command {
            NodesCommand::List { limit, all } => self.list::<NodeList>("/nodes", &request, limit, all, out, err).await,
            NodesCommand::History { .. } => self.show::<NodeHistory>(&request, out, err).await,
            NodesCommand::Update(args) if reads_first(&args) => {
                // PATCH replaces whole policies: the node's, with the fields given changed.
                let node: tether::views::NodeView = self.call(&Planned::get(request.path.clone()), err).await?;
                let patch = update_patch(&args, Some(&node.spec))?;
                self.act::<tether::views::NodeView>(&Planned::patch(request.path, to_json(&patch)?, None), out, err).await
            }
            _ => self.act::<tether::views::NodeView>(&request, out, err).await,
        }
    }

    /// `request` is the first page of `base`; with `all`, every page after it too.
    async fn list<P: Page>(
        &self,
        base: &str,
        request: &Planned,
        limit: Option<u32>,
        all: bool,
        out: &mut (dyn Write + Send),
        err: &mut (dyn Write + Send),
    ) -> Result<(), CliError> {
        let (mut page, raw): (P, _) = self.call_raw(request, err).await?;
        let mut raw = Some(raw);
        let mut seen = std::collections::HashSet::new();
        while let Some(token) = page.next_token().filter(|_| all).map(str::to_owned) {
            if !seen.insert(token.clone()) {
                return Err(CliError::Failed(format!("the API returned next_token {token} twice; stopping")));
            }
            let more: P = self.call(&Planned::get(list_path(base, limit, Some(&token))), err).await?;
            page.append(more);
            raw = None;
        }
        if self.json {
            // One page: the API's answer as is; several: the pages joined.
            let text = raw.map(|r| output::pretty(&r)).unwrap_or_else(|| output::json(&page));
            let _ = writeln!(out, "{text}");
        } else {
            let _ = write!(out, "{}", page.human());
            if let Some(token) = page.next_token() {
                let _ = writeln!(err, "more {} after {token}: use --all to list every page", base.trim_start_matches('/'));
            }
        }
        Ok(())
    }

    /// Sends `request` and prints its answer.
    async fn show<T: output::Shown + DeserializeOwned>(&self, request: &Planned, out: &mut (dyn Write + Send), err: &mut (dyn Write + Send)) -> Result<(), CliError> {
        let (value, raw): (T, _) = self.call_raw(request, err).await?;
        self.print(&value, &raw, out);
        Ok(())
    }

    /// Sends `request` and prints its answer; with `--wait`, what it settled to.
    async fn act<T: wait::Watched>(&self, request: &Planned, out: &mut (dyn Write + Send), err: &mut (dyn Write + Send)) -> Result<(), CliError> {
        let shown: (T, _) = self.call_raw(request, err).await?;
        let (value, raw) = match request.wait {
            Some(timeout) => self.wait(shown, timeout, out, err).await?,
            None => shown,
        };
        self.print(&value, &raw, out);
        Ok(())
    }

    /// The API's JSON as sent with `--json`, else the human form.
    fn print<T: output::Shown>(&self, value: &T, raw: &[u8], out: &mut (dyn Write + Send)) {
        let text = if self.json { output::pretty(raw) + "\n" } else { value.human() };
        let _ = write!(out, "{text}");
    }

    /// Sends `request` and reads its JSON answer.
    async fn call<T: DeserializeOwned>(&self, request: &Planned, err: &mut (dyn Write + Send)) -> Result<T, CliError> {
        Ok(self.call_raw(request, err).await?.0)
    }

    /// Sends `request`; its JSON answer, read and as sent.
    async fn call_raw<T: DeserializeOwned>(&self, request: &Planned, err: &mut (dyn Write + Send)) -> Result<(T, bytes::Bytes), CliError> {
        let answer = self
            .client
            .send(request.method.clone(), &request.path, request.body.clone(), request.idempotency_key.as_deref(), err)
            .await?;
        if !answer.status.is_success() {
            let problem = serde_json::from_slice::<Problem>(&answer.body).ok().map(Box::new);
            return Err(CliError::Api { status: answer.status, problem, body: answer.body });
        }
        let value = serde_json::from_slice(&answer.body).map_err(|e| {
            let text: String = String::from_utf8_lossy(&answer.body).chars().take(300).collect();
            CliError::Transport(format!("the API's answer to {} {} is not what this CLI expects ({e}): {text}", request.method, request.path))
        })?;
        Ok((value, answer.body))
    }
}
