//! Load balancer as a service (compat.md §4): tenants create *projects* and, in them,
//! *instances* through a JSON API on the admin address (`POST /lbaas`, `/LB/project/`,
//! `/LB/instance/`; see [`api`]).
//!
//! An instance is an ordinary listener and cluster, both named `lbaas-<id>`, created at run
//! time on a port of `[lbaas] port_range`: its entities are the cluster's backends, its
//! health check the cluster's `[clusters.health]`, its auto-scaling policy the cluster's
//! `[clusters.autoscale]`. So health checks, balancing, stats and autoscaling are the real
//! ones, and the instance's entities are whatever the cluster holds (a scaling hook that adds
//! a backend through `/v1/clusters/lbaas-<id>/backends` adds an entity).
//!
//! The projects and instances themselves ([`Registry`]) are kept with the running config in
//! the control plane's state file (module record `lbaas`), and every API change edits both in
//! one commit: an instance and its listener and cluster appear, change and disappear together,
//! and survive a restart or `kill -9` on the same ports.

pub mod api;
pub mod spec;

use crate::control::doc::Kind;
use crate::control::{ApiError, Change, Ext};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value as Json};

/// The module record's key in the state file.
pub const EXT_KEY: &str = "lbaas";
/// Listener and cluster names of instances: `lbaas-<id>`.
pub const PREFIX: &str = "lbaas-";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Project {
    pub id: u64,
    pub name: String,
    pub user: String,
    /// Unix seconds.
    pub created_at: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Instance {
    pub id: u64,
    pub name: String,
    /// Project id.
    pub project: u64,
    /// `tcp` or `http`.
    pub traffic_type: String,
    pub port: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet: Option<String>,
    /// The health check as the API shows it (`false` when disabled).
    pub health_check: Json,
    /// `false`, `true` or the policy object, as given.
    pub auto_scaling: Json,
    pub created_at: u64,
}

impl Instance {
    /// The name of its listener and of its cluster.
    pub fn object_name(&self) -> String {
        object_name(self.id)
    }
}

pub fn object_name(id: u64) -> String {
    format!("{PREFIX}{id}")
}

/// Every project and instance, and the next ids (never reused).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Registry {
    pub next_project: u64,
    pub next_instance: u64,
    pub projects: Vec<Project>,
    pub instances: Vec<Instance>,
}

impl Default for Registry {
    fn default() -> Self {
        Registry {
            next_project: 1,
            next_instance: 1,
            projects: Vec::new(),
            instances: Vec::new(),
        }
    }
}

impl Registry {
    pub fn from_ext(ext: &Ext) -> Result<Registry, ApiError> {
        match ext.get(EXT_KEY) {
            None => Ok(Registry::default()),
            Some(v) => serde_json::from_value(v.clone()).map_err(|e| {
                ApiError::new(
                    500,
                    "corrupt_state",
                    format!("the LBaaS records in the state file are unreadable: {e}"),
                )
            }),
        }
    }

    pub fn store(&self, ext: &mut Ext) {
        ext.insert(
            EXT_KEY.into(),
            serde_json::to_value(self).unwrap_or(Json::Null),
        );
    }

    pub fn project(&self, id: u64) -> Option<&Project> {
        self.projects.iter().find(|p| p.id == id)
    }

    pub fn instances_of(&self, project: u64) -> impl Iterator<Item = &Instance> {
        self.instances.iter().filter(move |i| i.project == project)
    }

    /// The instance whose listener or cluster is named `name`.
    pub fn owner_of(&self, name: &str) -> Option<&Instance> {
        let id: u64 = name.strip_prefix(PREFIX)?.parse().ok()?;
        self.instances.iter().find(|i| i.id == id)
    }
}

/// The admin API may change an instance's cluster (add backends, for one) but not delete its
/// listener or cluster, nor replace its listener: the LBaaS API owns those.
pub fn guard(ext: &Ext, change: &Change) -> Result<(), ApiError> {
    let (kind, name) = match change {
        Change::Delete(kind, name) => (*kind, name),
        Change::Put(Kind::Listener, name, _) => (Kind::Listener, name),
        _ => return Ok(()),
    };
    if !name.starts_with(PREFIX) || !ext.contains_key(EXT_KEY) {
        return Ok(());
    }
    let reg = Registry::from_ext(ext)?;
    match reg.owner_of(name) {
        Some(i) => Err(ApiError::new(
            409,
            "managed",
            format!(
                "{} {name:?} belongs to LBaaS instance {} ({:?}); change it through POST /lbaas",
                kind.noun(),
                i.id,
                i.name
            ),
        )),
        None => Ok(()),
    }
}

/// The LBaaS instance a cluster belongs to: its id and `{"id","name","project"}`.
pub fn instance_of_cluster(ext: &Ext, cluster: &str) -> Option<(u64, Json)> {
    let id: u64 = cluster.strip_prefix(PREFIX)?.parse().ok()?;
    let reg = ext.get(EXT_KEY)?;
    let inst = reg
        .get("instances")?
        .as_array()?
        .iter()
        .find(|i| i.get("id").and_then(Json::as_u64) == Some(id))?;
    let project_id = inst.get("project").and_then(Json::as_u64);
    let project = reg
        .get("projects")
        .and_then(Json::as_array)
        .and_then(|ps| {
            ps.iter()
                .find(|p| p.get("id").and_then(Json::as_u64) == project_id)
        })
        .and_then(|p| p.get("name"))
        .cloned()
        .unwrap_or(Json::Null);
    Some((
        id,
        json!({"id": id, "name": inst.get("name").cloned().unwrap_or(Json::Null), "project": project}),
    ))
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg() -> Registry {
        Registry {
            next_project: 2,
            next_instance: 8,
            projects: vec![Project {
                id: 1,
                name: "shop".into(),
                user: "john".into(),
                created_at: 0,
            }],
            instances: vec![Instance {
                id: 7,
                name: "web".into(),
                project: 1,
                traffic_type: "http".into(),
                port: 10000,
                subnet: None,
                health_check: Json::Bool(false),
                auto_scaling: Json::Bool(false),
                created_at: 0,
            }],
        }
    }

    #[test]
    fn registry_round_trip_ownership_and_guard() {
        let mut ext = Ext::new();
        assert_eq!(Registry::from_ext(&ext).unwrap(), Registry::default());
        reg().store(&mut ext);
        let r = Registry::from_ext(&ext).unwrap();
        assert_eq!(r, reg());
        assert_eq!(r.owner_of("lbaas-7").map(|i| i.id), Some(7));
        assert!(r.owner_of("lbaas-8").is_none() && r.owner_of("web").is_none());
        let del = Change::Delete(Kind::Cluster, "lbaas-7".into());
        assert_eq!(guard(&ext, &del).unwrap_err().status, 409);
        assert!(guard(&ext, &Change::Delete(Kind::Cluster, "lbaas-9".into())).is_ok());
        let add = Change::AddBackend {
            cluster: "lbaas-7".into(),
            body: json!({"addr": "127.0.0.1:1"}),
        };
        assert!(guard(&ext, &add).is_ok());
        let (id, j) = instance_of_cluster(&ext, "lbaas-7").unwrap();
        assert_eq!(id, 7);
        assert_eq!(j, json!({"id": 7, "name": "web", "project": "shop"}));
        assert!(instance_of_cluster(&ext, "app").is_none());
    }
}
