//! The LBaaS JSON API (compat.md §4), served by the admin server:
//!
//! ```text
//! POST /lbaas          {"action":"create|info|update|delete|list","type":"project|instance","info":{...}}
//! POST /LB/project/    the same, "type" implied (the original implementation's paths)
//! POST /LB/instance/
//! ```
//!
//! `GET` with a body works too (the seed's clients sent GET with JSON); `GET` without one
//! lists. Success: `200 {"status":"successful","action":..,"type":..,"info":{...}}`. Failure:
//! a 4xx (or 500) `{"status":"fail","action":..,"type":..,"message":"..","error":{"code",
//! "message","field"}}`. Changes (create, update, delete) need the admin token when one is set.

use super::spec::{self, Health, Scaling, Subnet, TrafficType};
use super::{object_name, unix_now, Instance, Project, Registry};
use crate::admin::{Request, Response, Shared};
use crate::config::lbaas::LbaasConfig;
use crate::control::doc::{self, Kind};
use crate::control::{ApiError, Control, Txn, View};
use serde_json::{json, Map, Value as Json};
use std::collections::HashSet;
use std::net::{SocketAddr, TcpListener};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Act {
    Create,
    Info,
    Update,
    Delete,
    List,
}

impl Act {
    fn parse(s: &str) -> Option<Act> {
        match s {
            "create" => Some(Act::Create),
            "info" => Some(Act::Info),
            "update" => Some(Act::Update),
            "delete" => Some(Act::Delete),
            "list" => Some(Act::List),
            _ => None,
        }
    }
    fn changes(self) -> bool {
        matches!(self, Act::Create | Act::Update | Act::Delete)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Type {
    Project,
    Instance,
}

/// Ports tried for a new instance before giving up when every bind fails (another process
/// took them between the probe and the bind).
const BIND_ATTEMPTS: usize = 16;

fn bad(message: impl Into<String>) -> ApiError {
    ApiError::new(400, "bad_request", message)
}

fn not_found(what: &str, field: &str) -> ApiError {
    ApiError::new(404, "not_found", format!("no such {what}")).field(field)
}

fn reply(status: u16, v: &Json) -> Response {
    Response::json(status, v)
}

/// Whether a request target is one of this API's paths, and then the type it implies
/// (`/LB/project/` → `project`). As the admin API routes: the query aside, slashes trimmed.
pub fn path_type(target: &str) -> Option<Option<&'static str>> {
    let path = target.split(['?', '#']).next().unwrap_or("");
    match path.trim_matches('/') {
        "lbaas" => Some(None),
        "LB/project" => Some(Some("project")),
        "LB/instance" => Some(Some("instance")),
        _ => None,
    }
}

/// A failure in this API's shape.
pub(crate) fn fail(action: Option<&str>, kind: Option<&str>, e: &ApiError) -> Response {
    let r = reply(
        e.status,
        &json!({
            "status": "fail",
            "action": action,
            "type": kind,
            "message": e.message,
            "error": {"code": e.code, "message": e.message, "field": e.field},
        }),
    );
    match e.status {
        401 => r.with("WWW-Authenticate", "Bearer realm=\"switchyard\"".into()),
        405 => r.with("Allow", "POST, GET".into()),
        429 => r.with("Retry-After", "1".into()),
        _ => r,
    }
}

/// Serves one request to `/lbaas` (`implied` = None), `/LB/project/` or `/LB/instance/`.
pub fn handle(shared: &Shared, req: &Request, implied: Option<&'static str>) -> Response {
    if req.method != "POST" && req.method != "GET" {
        return fail(
            None,
            implied,
            &ApiError::new(
                405,
                "method_not_allowed",
                format!("{} is not allowed here (use POST)", req.method),
            ),
        );
    }
    let (action, kind, info) = match envelope(req, implied) {
        Ok(e) => e,
        Err((a, t, e)) => return fail(a.as_deref(), t.as_deref(), &e),
    };
    let (a, t) = (action_name(action), type_name(kind));
    let result = (|| {
        let who = if action.changes() {
            Some(crate::admin::api::authorize(shared, req)?)
        } else {
            None
        };
        let who = who.as_deref().unwrap_or("");
        let c = &shared.control;
        match kind {
            Type::Project => project(c, action, &info, who),
            Type::Instance => instance(c, action, &info, who),
        }
    })();
    match result {
        Ok(info) => reply(
            200,
            &json!({"status": "successful", "action": a, "type": t, "info": info}),
        ),
        Err(e) => fail(Some(a), Some(t), &e),
    }
}

fn action_name(a: Act) -> &'static str {
    match a {
        Act::Create => "create",
        Act::Info => "info",
        Act::Update => "update",
        Act::Delete => "delete",
        Act::List => "list",
    }
}

fn type_name(t: Type) -> &'static str {
    match t {
        Type::Project => "project",
        Type::Instance => "instance",
    }
}

type EnvelopeError = (Option<String>, Option<String>, ApiError);

/// `{"action","type","info"}` → its parts. `GET` without a body lists.
fn envelope(
    req: &Request,
    implied: Option<&'static str>,
) -> Result<(Act, Type, Map<String, Json>), EnvelopeError> {
    let err = |a: Option<&str>, t: Option<&str>, e: ApiError| {
        (a.map(str::to_string), t.map(str::to_string), e)
    };
    let parse_type = |s: &str| match s {
        "project" => Some(Type::Project),
        "instance" => Some(Type::Instance),
        _ => None,
    };
    if req.body.is_empty() {
        return match (req.method.as_str(), implied.and_then(parse_type)) {
            ("GET", Some(t)) => Ok((Act::List, t, Map::new())),
            _ => Err(err(
                None,
                implied,
                bad(
                    "a JSON body is required: {\"action\":\"...\",\"type\":\"...\",\"info\":{...}}",
                ),
            )),
        };
    }
    let body: Json = serde_json::from_slice(&req.body).map_err(|e| {
        err(
            None,
            implied,
            ApiError::new(400, "bad_json", format!("invalid JSON: {e}")),
        )
    })?;
    let Json::Object(mut o) = body else {
        return Err(err(None, implied, bad("the body must be a JSON object")));
    };
    let action_s = o.get("action").and_then(Json::as_str).map(str::to_string);
    let type_s = o
        .get("type")
        .and_then(Json::as_str)
        .map(str::to_string)
        .or(implied.map(str::to_string));
    let (a, t) = (action_s.as_deref(), type_s.as_deref());
    for k in o.keys() {
        if !["action", "type", "info"].contains(&k.as_str()) {
            return Err(err(
                a,
                t,
                bad(format!("unknown key {k:?} (expected action, type, info)")).field(k.as_str()),
            ));
        }
    }
    let action = match (o.get("action"), a.and_then(Act::parse)) {
        (_, Some(x)) => x,
        (None, _) => return Err(err(a, t, bad("missing action").field("action"))),
        (Some(v), None) => {
            return Err(err(
                a,
                t,
                bad(format!(
                    "unknown action {v} (expected create, info, update, delete or list)"
                ))
                .field("action"),
            ))
        }
    };
    let kind = match t.and_then(parse_type) {
        Some(k) => k,
        None if o.get("type").is_none() && implied.is_none() => {
            return Err(err(a, t, bad("missing type").field("type")))
        }
        None => {
            return Err(err(
                a,
                t,
                bad(format!(
                    "unknown type {} (expected project or instance)",
                    o.get("type").unwrap_or(&Json::Null)
                ))
                .field("type"),
            ))
        }
    };
    if let (Some(i), Some(given)) = (implied, o.get("type").and_then(Json::as_str)) {
        if i != given {
            return Err(err(
                a,
                Some(given),
                bad(format!("type {given:?} sent to the {i} path")).field("type"),
            ));
        }
    }
    let info = match o.remove("info") {
        None | Some(Json::Null) => Map::new(),
        Some(Json::Object(m)) => m,
        Some(_) => return Err(err(a, t, bad("info must be an object").field("info"))),
    };
    Ok((action, kind, info))
}

fn only_keys(info: &Map<String, Json>, allowed: &[&str]) -> Result<(), ApiError> {
    for k in info.keys() {
        if !allowed.contains(&k.as_str()) {
            return Err(spec::invalid(
                &format!("info.{k}"),
                format!("unknown key (expected: {})", allowed.join(", ")),
            ));
        }
    }
    Ok(())
}

fn id_field(info: &Map<String, Json>, field: &str) -> Result<Option<u64>, ApiError> {
    match info.get("id") {
        None => Ok(None),
        Some(v) => v
            .as_u64()
            .map(Some)
            .ok_or_else(|| spec::invalid(field, "expected an integer id")),
    }
}

/// A project named by `{"id": n}` or `{"name": ".."}` (`key` is the key holding a name or id
/// of a project, e.g. `project` in an instance's info).
fn find_project<'r>(
    reg: &'r Registry,
    by_id: Option<u64>,
    name: Option<&Json>,
    field: &str,
) -> Result<&'r Project, ApiError> {
    if let Some(id) = by_id {
        return reg
            .project(id)
            .ok_or_else(|| not_found(&format!("project with id {id}"), field));
    }
    match name {
        Some(Json::String(n)) => reg
            .projects
            .iter()
            .find(|p| p.name == n.trim())
            .ok_or_else(|| not_found(&format!("project {n:?}"), field)),
        Some(Json::Number(n)) => {
            let id = n
                .as_u64()
                .ok_or_else(|| spec::invalid(field, "expected a project name or id"))?;
            reg.project(id)
                .ok_or_else(|| not_found(&format!("project with id {id}"), field))
        }
        Some(_) => Err(spec::invalid(field, "expected a project name or id")),
        None => Err(spec::invalid(
            field,
            "missing (give the project's id or name)",
        )),
    }
}

// ------------------------------------------------------------------------------ projects

fn project(
    c: &Control,
    action: Act,
    info: &Map<String, Json>,
    who: &str,
) -> Result<Json, ApiError> {
    match action {
        Act::Create => {
            only_keys(info, &["name", "user", "type", "instances"])?;
            let name = spec::name(info.get("name"), "info.name")?;
            let user = spec::name(info.get("user"), "info.user")?;
            if info
                .get("instances")
                .is_some_and(|i| i.as_array().is_none_or(|a| !a.is_empty()))
            {
                return Err(spec::invalid(
                    "info.instances",
                    "a new project has no instances (create them with type instance)",
                ));
            }
            let (id, _) = c.transact(who, &format!("lbaas: create project {name:?}"), |txn| {
                let mut reg = Registry::from_ext(&txn.ext)?;
                if reg.projects.iter().any(|p| p.name == name) {
                    return Err(ApiError::new(
                        409,
                        "exists",
                        format!("a project named {name:?} exists"),
                    )
                    .field("info.name"));
                }
                let id = reg.next_project;
                reg.next_project += 1;
                reg.projects.push(Project {
                    id,
                    name: name.clone(),
                    user: user.clone(),
                    created_at: unix_now(),
                });
                reg.store(&mut txn.ext);
                Ok(id)
            })?;
            show_project(c, id)
        }
        Act::Info => {
            only_keys(info, &["id", "name", "type"])?;
            let by_id = id_field(info, "info.id")?;
            c.view(|v| {
                let reg = Registry::from_ext(v.ext)?;
                let p = find_project(&reg, by_id, info.get("name"), "info.name")?;
                Ok(project_view(v, &reg, p))
            })
        }
        Act::List => {
            only_keys(info, &["user", "type"])?;
            let user = match info.get("user") {
                None => None,
                Some(u) => Some(spec::name(Some(u), "info.user")?),
            };
            c.view(|v| {
                let reg = Registry::from_ext(v.ext)?;
                let list: Vec<Json> = reg
                    .projects
                    .iter()
                    .filter(|p| user.as_ref().is_none_or(|u| &p.user == u))
                    .map(|p| project_view(v, &reg, p))
                    .collect();
                Ok(json!({"projects": list}))
            })
        }
        Act::Update => {
            only_keys(info, &["id", "name", "user", "type"])?;
            let by_id = id_field(info, "info.id")?;
            let user = match info.get("user") {
                None => None,
                Some(u) => Some(spec::name(Some(u), "info.user")?),
            };
            // With an id, `name` renames; without, it names the project to update.
            let rename = match (by_id, info.get("name")) {
                (Some(_), Some(n)) => Some(spec::name(Some(n), "info.name")?),
                _ => None,
            };
            if user.is_none() && rename.is_none() {
                return Err(spec::invalid(
                    "info",
                    "nothing to change (give user, or id and a new name)",
                ));
            }
            let name_ref = if by_id.is_some() {
                None
            } else {
                info.get("name")
            };
            let (id, _) = c.transact(who, "lbaas: update project", |txn| {
                let mut reg = Registry::from_ext(&txn.ext)?;
                let id = find_project(&reg, by_id, name_ref, "info.name")?.id;
                if let Some(n) = &rename {
                    if reg.projects.iter().any(|p| &p.name == n && p.id != id) {
                        return Err(ApiError::new(
                            409,
                            "exists",
                            format!("a project named {n:?} exists"),
                        )
                        .field("info.name"));
                    }
                }
                if let Some(p) = reg.projects.iter_mut().find(|p| p.id == id) {
                    if let Some(n) = &rename {
                        p.name = n.clone();
                    }
                    if let Some(u) = &user {
                        p.user = u.clone();
                    }
                }
                reg.store(&mut txn.ext);
                Ok(id)
            })?;
            show_project(c, id)
        }
        Act::Delete => {
            only_keys(info, &["id", "name", "type", "force"])?;
            let by_id = id_field(info, "info.id")?;
            let force = match info.get("force") {
                None => false,
                Some(Json::Bool(b)) => *b,
                Some(_) => return Err(spec::invalid("info.force", "expected true or false")),
            };
            let (shown, _) = c.transact(who, "lbaas: delete project", |txn| {
                let mut reg = Registry::from_ext(&txn.ext)?;
                let p = find_project(&reg, by_id, info.get("name"), "info.name")?.clone();
                let instances: Vec<Instance> = reg.instances_of(p.id).cloned().collect();
                if !instances.is_empty() && !force {
                    return Err(ApiError::new(
                        409,
                        "has_instances",
                        format!(
                            "project {:?} has {} instance(s); delete them first, or send \
                             \"force\": true to delete them with it",
                            p.name,
                            instances.len()
                        ),
                    ));
                }
                let shown = json!({
                    "id": p.id, "name": p.name, "user": p.user, "type": "project",
                    "deleted": true,
                    "instances_deleted": instances.iter().map(|i| json!({"id": i.id, "name": i.name})).collect::<Vec<_>>(),
                });
                for i in &instances {
                    remove_objects(txn, i);
                }
                reg.instances.retain(|i| i.project != p.id);
                reg.projects.retain(|x| x.id != p.id);
                reg.store(&mut txn.ext);
                Ok(shown)
            })?;
            Ok(shown)
        }
    }
}

fn show_project(c: &Control, id: u64) -> Result<Json, ApiError> {
    c.view(|v| {
        let reg = Registry::from_ext(v.ext)?;
        let p = find_project(&reg, Some(id), None, "info.id")?;
        Ok(project_view(v, &reg, p))
    })
}

fn project_view(v: &View<'_>, reg: &Registry, p: &Project) -> Json {
    let instances: Vec<Json> = reg
        .instances_of(p.id)
        .map(|i| {
            let full = instance_view(v, reg, i);
            json!({
                "id": i.id,
                "name": i.name,
                "traffic_type": i.traffic_type,
                "address": full["address"],
                "status": full["status"],
            })
        })
        .collect();
    json!({
        "id": p.id,
        "type": "project",
        "name": p.name,
        "user": p.user,
        "instances": instances,
        "created_at": p.created_at,
    })
}

// ----------------------------------------------------------------------------- instances

/// The parts of an instance a create or update sets.
#[derive(Default)]
struct Changes {
    traffic: Option<TrafficType>,
    entities: Option<Vec<(String, SocketAddr)>>,
    health: Option<Health>,
    scaling: Option<Scaling>,
    /// Some(None): remove the subnet.
    subnet: Option<Option<(String, Subnet)>>,
    port: Option<u16>,
}

const INSTANCE_KEYS: [&str; 8] = [
    "id",
    "project",
    "name",
    "type",
    "traffic_type",
    "backend",
    "subnet",
    "port",
];

fn changes(
    info: &Map<String, Json>,
    lb: &LbaasConfig,
    creating: bool,
) -> Result<Changes, ApiError> {
    only_keys(info, &INSTANCE_KEYS)?;
    if let Some(t) = info.get("type") {
        if t.as_str() != Some("instance") {
            return Err(spec::invalid("info.type", "expected \"instance\""));
        }
    }
    let mut ch = Changes {
        traffic: info
            .get("traffic_type")
            .map(|t| TrafficType::parse(t, "info.traffic_type"))
            .transpose()?,
        ..Changes::default()
    };
    if creating && ch.traffic.is_none() {
        return Err(spec::invalid("info.traffic_type", "missing (tcp or http)"));
    }
    ch.port = info
        .get("port")
        .map(|p| {
            p.as_u64()
                .and_then(|n| u16::try_from(n).ok())
                .filter(|&n| n > 0)
                .ok_or_else(|| spec::invalid("info.port", "expected a port number"))
        })
        .transpose()?;
    ch.subnet = match info.get("subnet") {
        None => None,
        Some(Json::Null) => Some(None),
        Some(Json::String(s)) => Some(Some((
            s.trim().to_string(),
            Subnet::parse(s).map_err(|e| spec::invalid("info.subnet", e))?,
        ))),
        Some(_) => return Err(spec::invalid("info.subnet", "expected \"a.b.c.d/n\"")),
    };
    let empty = Map::new();
    let backend = match info.get("backend") {
        None if creating => {
            return Err(spec::invalid(
                "info.backend",
                "missing (an instance needs backend.entities)",
            ))
        }
        None => &empty,
        Some(Json::Object(b)) => b,
        Some(_) => return Err(spec::invalid("info.backend", "expected an object")),
    };
    for k in backend.keys() {
        if !["entities", "health-check", "auto-scaling"].contains(&k.as_str()) {
            return Err(spec::invalid(
                &format!("info.backend.{k}"),
                "unknown key (expected entities, health-check, auto-scaling)",
            ));
        }
    }
    ch.entities = match backend.get("entities") {
        None if creating => {
            return Err(spec::invalid("info.backend.entities", "missing"));
        }
        None => None,
        Some(e) => Some(spec::entities(e, "info.backend.entities")?),
    };
    if creating || backend.contains_key("health-check") {
        ch.health = Some(spec::health(
            backend.get("health-check"),
            "info.backend.health-check",
        )?);
    }
    if creating || backend.contains_key("auto-scaling") {
        ch.scaling = Some(spec::auto_scaling(
            backend.get("auto-scaling"),
            lb.autoscale.as_ref(),
            "info.backend.auto-scaling",
        )?);
    }
    Ok(ch)
}

fn check_subnet(subnet: Option<&Subnet>, entities: &[SocketAddr]) -> Result<(), ApiError> {
    let Some(s) = subnet else {
        return Ok(());
    };
    match entities.iter().position(|a| !s.contains(a.ip())) {
        None => Ok(()),
        Some(i) => Err(spec::invalid(
            "info.backend.entities",
            format!(
                "entity {} is outside the instance's subnet (entity {i})",
                entities[i]
            ),
        )),
    }
}

/// The instance an info names: `{"id": n}`, or `{"project": .., "name": ..}`.
fn find_instance(reg: &Registry, info: &Map<String, Json>) -> Result<usize, ApiError> {
    if let Some(id) = id_field(info, "info.id")? {
        return reg
            .instances
            .iter()
            .position(|i| i.id == id)
            .ok_or_else(|| not_found(&format!("instance with id {id}"), "info.id"));
    }
    if !info.contains_key("name") {
        return Err(spec::invalid(
            "info.id",
            "missing (give the instance's id, or its project and name)",
        ));
    }
    let p = find_project(reg, None, info.get("project"), "info.project")?;
    let name = spec::name(info.get("name"), "info.name")?;
    reg.instances
        .iter()
        .position(|i| i.project == p.id && i.name == name)
        .ok_or_else(|| {
            not_found(
                &format!("instance {name:?} in project {:?}", p.name),
                "info.name",
            )
        })
}

fn remove_objects(txn: &mut Txn<'_>, i: &Instance) {
    let name = i.object_name();
    doc::remove(&mut txn.doc, Kind::Listener, &name);
    doc::remove(&mut txn.doc, Kind::Cluster, &name);
}

/// Ports already taken by listeners of this process.
fn used_ports(c: &Control) -> HashSet<u16> {
    c.view(|v| {
        v.config
            .listeners
            .iter()
            .map(|l| l.bind.port())
            .chain(v.running.values().map(|r| r.local.port()))
            .collect()
    })
}

/// Whether nobody listens on `addr` (this process's own ports aside: see [`used_ports`]).
/// Bound without `SO_REUSEPORT`, so a port another process holds with it is seen as taken.
fn free(addr: SocketAddr) -> bool {
    TcpListener::bind(addr).is_ok()
}

/// A port for a new instance: `requested` (checked), or the lowest free one of the range.
fn pick_port(
    c: &Control,
    lb: &LbaasConfig,
    requested: Option<u16>,
    tried: &HashSet<u16>,
) -> Result<u16, ApiError> {
    let (lo, hi) = lb.port_range;
    let used = used_ports(c);
    if let Some(p) = requested {
        if !(lo..=hi).contains(&p) {
            return Err(spec::invalid(
                "info.port",
                format!("{p} is outside [lbaas] port_range ({lo}-{hi})"),
            ));
        }
        if used.contains(&p) || !free(SocketAddr::new(lb.bind, p)) {
            return Err(
                ApiError::new(409, "port_in_use", format!("port {p} is already in use"))
                    .field("info.port"),
            );
        }
        return Ok(p);
    }
    (lo..=hi)
        .filter(|p| !used.contains(p) && !tried.contains(p))
        .find(|&p| free(SocketAddr::new(lb.bind, p)))
        .ok_or_else(|| {
            ApiError::new(
                409,
                "no_free_port",
                format!(
                    "no free port left in [lbaas] port_range ({lo}-{hi}) on {}",
                    lb.bind
                ),
            )
        })
}

fn instance(
    c: &Control,
    action: Act,
    info: &Map<String, Json>,
    who: &str,
) -> Result<Json, ApiError> {
    let lb = c.view(|v| v.config.lbaas.clone());
    match action {
        Act::Create => {
            let ch = changes(info, &lb, true)?;
            let name = spec::name(info.get("name"), "info.name")?;
            if info.contains_key("id") {
                return Err(spec::invalid("info.id", "ids are given by the system"));
            }
            let project_ref = info.get("project").cloned();
            if project_ref.is_none() {
                return Err(spec::invalid(
                    "info.project",
                    "missing (a project name or id)",
                ));
            }
            // Before a port is picked: these answers are more useful than "no free port".
            c.view(|v| {
                let reg = Registry::from_ext(v.ext)?;
                let p = find_project(&reg, None, project_ref.as_ref(), "info.project")?;
                let taken = reg.instances_of(p.id).any(|i| i.name == name);
                match taken {
                    true => Err(exists_in(&p.name, &name)),
                    false => Ok(()),
                }
            })?;
            let entities: Vec<SocketAddr> = ch.entities.iter().flatten().map(|(_, a)| *a).collect();
            check_subnet(
                ch.subnet.as_ref().and_then(|s| s.as_ref()).map(|s| &s.1),
                &entities,
            )?;
            let mut tried = HashSet::new();
            for _ in 0..BIND_ATTEMPTS {
                let port = pick_port(c, &lb, ch.port, &tried)?;
                let bind = SocketAddr::new(lb.bind, port);
                let result = c.transact(
                    who,
                    &format!("lbaas: create instance {name:?} on {bind}"),
                    |txn| create_instance(txn, &ch, &name, project_ref.as_ref(), bind),
                );
                match result {
                    Ok((id, _)) => return show_instance(c, id),
                    Err(e) if e.code == "bind_failed" && ch.port.is_none() => {
                        tried.insert(port);
                    }
                    Err(e) if e.code == "bind_failed" => {
                        return Err(ApiError::new(409, "port_in_use", e.message).field("info.port"))
                    }
                    Err(e) => return Err(e),
                }
            }
            Err(ApiError::new(
                409,
                "no_free_port",
                format!("{BIND_ATTEMPTS} ports of [lbaas] port_range could not be bound"),
            ))
        }
        Act::Info => {
            only_keys(info, &["id", "project", "name", "type"])?;
            c.view(|v| {
                let reg = Registry::from_ext(v.ext)?;
                let i = find_instance(&reg, info)?;
                Ok(instance_view(v, &reg, &reg.instances[i]))
            })
        }
        Act::List => {
            only_keys(info, &["project", "type"])?;
            c.view(|v| {
                let reg = Registry::from_ext(v.ext)?;
                let project = match info.get("project") {
                    None => None,
                    Some(p) => Some(find_project(&reg, None, Some(p), "info.project")?.id),
                };
                let list: Vec<Json> = reg
                    .instances
                    .iter()
                    .filter(|i| project.is_none_or(|p| i.project == p))
                    .map(|i| instance_view(v, &reg, i))
                    .collect();
                Ok(json!({"instances": list}))
            })
        }
        Act::Update => {
            let ch = changes(info, &lb, false)?;
            let (id, _) = c.transact(who, "lbaas: update instance", |txn| {
                update_instance(txn, info, &ch)
            })?;
            show_instance(c, id)
        }
        Act::Delete => {
            only_keys(info, &["id", "project", "name", "type"])?;
            let (shown, _) = c.transact(who, "lbaas: delete instance", |txn| {
                let mut reg = Registry::from_ext(&txn.ext)?;
                let i = reg.instances.remove(find_instance(&reg, info)?);
                remove_objects(txn, &i);
                reg.store(&mut txn.ext);
                Ok(json!({
                    "id": i.id, "name": i.name, "type": "instance",
                    "project": reg.project(i.project).map(|p| p.name.clone()),
                    "deleted": true,
                }))
            })?;
            Ok(shown)
        }
    }
}

fn exists_in(project: &str, name: &str) -> ApiError {
    ApiError::new(
        409,
        "exists",
        format!("project {project:?} has an instance named {name:?}"),
    )
    .field("info.name")
}

fn show_instance(c: &Control, id: u64) -> Result<Json, ApiError> {
    c.view(|v| {
        let reg = Registry::from_ext(v.ext)?;
        let i = reg
            .instances
            .iter()
            .find(|i| i.id == id)
            .ok_or_else(|| not_found("instance", "info.id"))?;
        Ok(instance_view(v, &reg, i))
    })
}

fn create_instance(
    txn: &mut Txn<'_>,
    ch: &Changes,
    name: &str,
    project_ref: Option<&Json>,
    bind: SocketAddr,
) -> Result<u64, ApiError> {
    let mut reg = Registry::from_ext(&txn.ext)?;
    let p = find_project(&reg, None, project_ref, "info.project")?.clone();
    if reg.instances_of(p.id).any(|i| i.name == name) {
        return Err(exists_in(&p.name, name));
    }
    // Ids are never reused; skip any whose names someone took through the admin API.
    let mut id = reg.next_instance;
    while doc::find(&txn.doc, Kind::Listener, &object_name(id)).is_some()
        || doc::find(&txn.doc, Kind::Cluster, &object_name(id)).is_some()
    {
        id += 1;
    }
    reg.next_instance = id + 1;
    let obj = object_name(id);
    let traffic = ch.traffic.unwrap_or(TrafficType::Tcp);
    let cluster = spec::cluster_table(
        &obj,
        None,
        ch.entities.as_deref(),
        ch.health.as_ref(),
        ch.scaling.as_ref(),
    );
    doc::put(&mut txn.doc, Kind::Cluster, &obj, cluster);
    doc::put(
        &mut txn.doc,
        Kind::Listener,
        &obj,
        spec::listener_table(&obj, bind, traffic),
    );
    reg.instances.push(Instance {
        id,
        name: name.to_string(),
        project: p.id,
        traffic_type: traffic.as_str().to_string(),
        port: bind.port(),
        subnet: ch.subnet.clone().flatten().map(|s| s.0),
        health_check: ch
            .health
            .as_ref()
            .map_or(Json::Bool(false), |h| h.show.clone()),
        auto_scaling: ch
            .scaling
            .as_ref()
            .map_or(Json::Bool(false), |s| s.show.clone()),
        created_at: unix_now(),
    });
    reg.store(&mut txn.ext);
    Ok(id)
}

fn update_instance(
    txn: &mut Txn<'_>,
    info: &Map<String, Json>,
    ch: &Changes,
) -> Result<u64, ApiError> {
    let mut reg = Registry::from_ext(&txn.ext)?;
    let idx = find_instance(&reg, info)?;
    let mut inst = reg.instances[idx].clone();
    let obj = inst.object_name();
    if let Some(p) = ch.port.filter(|&p| p != inst.port) {
        return Err(spec::invalid(
            "info.port",
            format!(
                "an instance keeps its port ({}, not {p}); create a new one",
                inst.port
            ),
        ));
    }
    // With an id, `name` renames and `project` must be the instance's own.
    if info.contains_key("id") {
        if let Some(p) = info.get("project") {
            let pid = find_project(&reg, None, Some(p), "info.project")?.id;
            if pid != inst.project {
                return Err(spec::invalid(
                    "info.project",
                    "an instance cannot move to another project",
                ));
            }
        }
        if let Some(n) = info.get("name") {
            let n = spec::name(Some(n), "info.name")?;
            if reg
                .instances_of(inst.project)
                .any(|i| i.name == n && i.id != inst.id)
            {
                return Err(ApiError::new(
                    409,
                    "exists",
                    format!("the project has an instance named {n:?}"),
                )
                .field("info.name"));
            }
            inst.name = n;
        }
    }
    let existing = doc::find(&txn.doc, Kind::Cluster, &obj)
        .cloned()
        .ok_or_else(|| {
            ApiError::new(
                409,
                "missing_objects",
                format!("the cluster {obj:?} of this instance is gone; delete the instance"),
            )
        })?;
    let subnet = match &ch.subnet {
        Some(s) => s.clone(),
        None => inst
            .subnet
            .as_deref()
            .and_then(|s| Subnet::parse(s).ok().map(|n| (s.to_string(), n))),
    };
    let entities: Vec<SocketAddr> = match &ch.entities {
        Some(e) => e.iter().map(|(_, a)| *a).collect(),
        None => txn
            .config
            .cluster(&obj)
            .map(|c| c.backends.iter().map(|b| b.addr).collect())
            .unwrap_or_default(),
    };
    check_subnet(subnet.as_ref().map(|s| &s.1), &entities)?;
    let cluster = spec::cluster_table(
        &obj,
        Some(&existing),
        ch.entities.as_deref(),
        ch.health.as_ref(),
        ch.scaling.as_ref(),
    );
    doc::put(&mut txn.doc, Kind::Cluster, &obj, cluster);
    if let Some(t) = ch.traffic {
        let mut l = doc::find(&txn.doc, Kind::Listener, &obj)
            .and_then(toml::Value::as_table)
            .cloned()
            .ok_or_else(|| {
                ApiError::new(
                    409,
                    "missing_objects",
                    format!("the listener {obj:?} of this instance is gone; delete the instance"),
                )
            })?;
        l.insert("protocol".into(), toml::Value::from(t.as_str()));
        doc::put(&mut txn.doc, Kind::Listener, &obj, toml::Value::Table(l));
        inst.traffic_type = t.as_str().to_string();
    }
    inst.subnet = subnet.map(|s| s.0);
    if let Some(h) = &ch.health {
        inst.health_check = h.show.clone();
    }
    if let Some(s) = &ch.scaling {
        inst.auto_scaling = s.show.clone();
    }
    let id = inst.id;
    reg.instances[idx] = inst;
    reg.store(&mut txn.ext);
    Ok(id)
}

/// An instance as the API shows it: the seed's fields, where it listens, and the state of
/// each entity (`up`, `down` by its health checks, `unknown` before its first check with
/// `init_state = "unknown"`, or `draining`). `status` is `healthy`
/// when its listener is open and at least one entity is up.
fn instance_view(v: &View<'_>, reg: &Registry, i: &Instance) -> Json {
    let obj = i.object_name();
    let cluster = v.config.cluster(&obj);
    let entities: Vec<Json> = cluster
        .map(|c| {
            c.backends
                .iter()
                .map(|b| {
                    let rec = v.health.get(&(obj.clone(), b.addr));
                    use crate::snapshot::HealthState;
                    let state = match rec.map(|r| r.state) {
                        _ if b.drain => "draining",
                        Some(HealthState::Down) => "down",
                        Some(HealthState::Unknown) => "unknown",
                        Some(HealthState::Up) | None => "up",
                    };
                    let mut e =
                        json!({"entity": b.name, "address": b.addr.to_string(), "state": state});
                    if let Some(r) = rec.filter(|r| r.last_ok.is_some()) {
                        e["last_check"] = json!({
                            "ok": r.last_ok,
                            "detail": r.last_detail,
                            "at_unix_ms": r.last_at_ms,
                        });
                    }
                    e
                })
                .collect()
        })
        .unwrap_or_default();
    let up = entities.iter().filter(|e| e["state"] == "up").count();
    let running = v.running.get(&obj);
    let address = running
        .map(|r| r.local)
        .or_else(|| {
            v.config
                .listeners
                .iter()
                .find(|l| l.name == obj)
                .map(|l| l.bind)
        })
        .map(|a| a.to_string());
    let status = if running.is_some() && up > 0 {
        "healthy"
    } else {
        "unhealthy"
    };
    let mut out = json!({
        "id": i.id,
        "type": "instance",
        "name": i.name,
        "project": reg.project(i.project).map(|p| p.name.clone()),
        "project_id": i.project,
        "traffic_type": i.traffic_type,
        "address": address,
        "status": status,
        "backend": {
            "entities": entities.iter().map(|e| e["entity"].clone()).collect::<Vec<_>>(),
            "health-check": i.health_check,
            "auto-scaling": i.auto_scaling,
        },
        "entities": entities,
        "entities_up": up,
        "listener": obj,
        "cluster": obj,
        "created_at": i.created_at,
    });
    if let Some(s) = &i.subnet {
        out["subnet"] = json!(s);
    }
    out
}
