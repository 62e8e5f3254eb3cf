//! How many replicas each of a Deployment's ReplicaSets gets: the surge and unavailability
//! budgets (`maxSurge` rounds up, `maxUnavailable` rounds down, both zero becomes one
//! unavailable), the new ReplicaSet's next size in a rolling update, proportional scaling of
//! several live ReplicaSets, the orderings Kubernetes sorts ReplicaSets by, and the sums the
//! status is made of. Pure functions of the objects, as `deployment/util` computes them.

use std::cmp::Ordering;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::revision;

/// Why an int-or-percent value is unusable.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ScaleError {
    #[error("invalid value {0:?}: string is not a percentage")]
    NotPercent(String),
}

/// `spec.replicas` of a Deployment (1 when absent, as defaulted).
pub fn desired(d: &Deployment) -> i32 {
    d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
}

/// `spec.replicas` of a ReplicaSet (1 when absent, as defaulted).
pub fn spec_replicas(rs: &ReplicaSet) -> i32 {
    rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
}

fn status_of(rs: &ReplicaSet) -> (i32, i32, i32) {
    let status = rs.status.clone().unwrap_or_default();
    (
        status.replicas,
        status.ready_replicas.unwrap_or(0),
        status.available_replicas.unwrap_or(0),
    )
}

/// Sum of `spec.replicas`.
pub fn total_spec(sets: &[&ReplicaSet]) -> i32 {
    sets.iter().map(|rs| spec_replicas(rs)).sum()
}

/// Sum of `status.replicas`.
pub fn total_actual(sets: &[&ReplicaSet]) -> i32 {
    sets.iter().map(|rs| status_of(rs).0).sum()
}

/// Sum of `status.readyReplicas`.
pub fn total_ready(sets: &[&ReplicaSet]) -> i32 {
    sets.iter().map(|rs| status_of(rs).1).sum()
}

/// Sum of `status.availableReplicas`.
pub fn total_available(sets: &[&ReplicaSet]) -> i32 {
    sets.iter().map(|rs| status_of(rs).2).sum()
}

/// `status.availableReplicas` of one set.
pub fn available(rs: &ReplicaSet) -> i32 {
    status_of(rs).2
}

/// Whether the Deployment uses the RollingUpdate strategy (the default).
pub fn is_rolling_update(d: &Deployment) -> bool {
    d.spec
        .as_ref()
        .and_then(|s| s.strategy.as_ref())
        .and_then(|s| s.type_.as_deref())
        .is_none_or(|t| t == "RollingUpdate")
}

/// An int-or-percent resolved against `total`, rounding a percentage up or down
/// (`intstr.GetScaledValueFromIntOrPercent`).
pub fn scaled_value(value: &IntOrString, total: i32, round_up: bool) -> Result<i32, ScaleError> {
    match value {
        IntOrString::Int(n) => Ok(*n),
        IntOrString::String(s) => {
            let percent: i64 = s
                .strip_suffix('%')
                .and_then(|p| p.parse().ok())
                .ok_or_else(|| ScaleError::NotPercent(s.clone()))?;
            let product = percent * i64::from(total);
            let scaled = if round_up {
                product.div_euclid(100) + i64::from(product.rem_euclid(100) != 0)
            } else {
                product.div_euclid(100)
            };
            Ok(i32::try_from(scaled).unwrap_or(i32::MAX))
        }
    }
}

/// The resolved `(maxSurge, maxUnavailable)` for `desired` replicas: surge rounds up,
/// unavailable rounds down, and when both come out zero one pod may be unavailable.
pub fn resolve_fenceposts(
    max_surge: Option<&IntOrString>,
    max_unavailable: Option<&IntOrString>,
    desired: i32,
) -> Result<(i32, i32), ScaleError> {
    let zero = IntOrString::Int(0);
    let surge = scaled_value(max_surge.unwrap_or(&zero), desired, true)?;
    let unavailable = scaled_value(max_unavailable.unwrap_or(&zero), desired, false)?;
    if surge == 0 && unavailable == 0 {
        return Ok((0, 1));
    }
    Ok((surge, unavailable))
}

fn fenceposts(d: &Deployment) -> (i32, i32) {
    let rolling = d
        .spec
        .as_ref()
        .and_then(|s| s.strategy.as_ref())
        .and_then(|s| s.rolling_update.as_ref());
    // The API server defaults both to 25%; the same applies when an object lacks them.
    let quarter = IntOrString::String("25%".into());
    let surge = rolling.map_or(Some(&quarter), |r| r.max_surge.as_ref());
    let unavailable = rolling.map_or(Some(&quarter), |r| r.max_unavailable.as_ref());
    resolve_fenceposts(surge, unavailable, desired(d)).unwrap_or((0, 0))
}

/// How many pods above `spec.replicas` may exist (0 unless RollingUpdate).
pub fn max_surge(d: &Deployment) -> i32 {
    if !is_rolling_update(d) {
        return 0;
    }
    fenceposts(d).0
}

/// How many of `spec.replicas` may be unavailable (0 unless RollingUpdate; at most
/// `spec.replicas`).
pub fn max_unavailable(d: &Deployment) -> i32 {
    let replicas = desired(d);
    if !is_rolling_update(d) || replicas == 0 {
        return 0;
    }
    fenceposts(d).1.min(replicas)
}

/// The size the new ReplicaSet should have next (`NewRSNewReplicas`): for RollingUpdate, grown
/// as far as the surge allows; for Recreate, the full size.
pub fn new_rs_new_replicas(d: &Deployment, all: &[&ReplicaSet], new_rs: &ReplicaSet) -> i32 {
    let replicas = desired(d);
    if !is_rolling_update(d) {
        return replicas;
    }
    let current = total_spec(all);
    let max_total = replicas + max_surge(d);
    let new_size = spec_replicas(new_rs);
    if current >= max_total {
        return new_size;
    }
    let scale_up = (max_total - current).min(replicas - new_size);
    new_size + scale_up
}

/// Whether the new ReplicaSet has everything: the full size, annotated for it, all available.
pub fn is_saturated(d: &Deployment, new_rs: Option<&ReplicaSet>) -> bool {
    let Some(rs) = new_rs else { return false };
    let replicas = desired(d);
    revision::desired_replicas(rs) == Some(replicas)
        && spec_replicas(rs) == replicas
        && available(rs) == replicas
}

/// How many replicas `rs` gains or loses when the Deployment's total changes by `to_add`,
/// `added` of which have already been handed out (`GetProportion`).
pub fn proportion(rs: &ReplicaSet, d: &Deployment, to_add: i32, added: i32) -> i32 {
    if spec_replicas(rs) == 0 || to_add == 0 || to_add == added {
        return 0;
    }
    let fraction = replica_set_fraction(rs, d);
    let allowed = to_add - added;
    if to_add > 0 {
        fraction.min(allowed)
    } else {
        fraction.max(allowed)
    }
}

/// How `rs` should change to keep its share of the Deployment's new total
/// (`getReplicaSetFraction`), its share measured against its `max-replicas` annotation.
pub fn replica_set_fraction(rs: &ReplicaSet, d: &Deployment) -> i32 {
    let size = spec_replicas(rs);
    if desired(d) == 0 {
        return -size;
    }
    let deployment_replicas = desired(d) + max_surge(d);
    let annotated = revision::max_replicas(rs)
        .unwrap_or_else(|| d.status.as_ref().and_then(|s| s.replicas).unwrap_or(0));
    if annotated <= 0 {
        return 0;
    }
    let scaled = f64::from(size) * f64::from(deployment_replicas) / f64::from(annotated);
    // math.Round: halves away from zero.
    let rounded = scaled.round();
    let rounded = if rounded > f64::from(i32::MAX) {
        i32::MAX
    } else {
        rounded as i32
    };
    rounded - size
}

/// The sizes of `sets` (already sorted: largest first) after handing out `to_add` replicas in
/// proportion, the rounding leftover going to the first (`DeploymentController.scale`).
pub fn proportional_sizes(d: &Deployment, sets: &[&ReplicaSet], to_add: i32) -> Vec<i32> {
    let mut added = 0;
    let mut sizes = Vec::with_capacity(sets.len());
    for rs in sets {
        if to_add != 0 {
            let share = proportion(rs, d, to_add, added);
            sizes.push(spec_replicas(rs) + share);
            added += share;
        } else {
            sizes.push(spec_replicas(rs));
        }
    }
    if to_add != 0 {
        if let Some(first) = sizes.first_mut() {
            *first = (*first + to_add - added).max(0);
        }
    }
    sizes
}

fn created(rs: &ReplicaSet) -> Option<k8s_openapi::jiff::Timestamp> {
    rs.metadata.creation_timestamp.as_ref().map(|t| t.0)
}

fn name(rs: &ReplicaSet) -> &str {
    rs.metadata.name.as_deref().unwrap_or_default()
}

/// Oldest first; ties by name (`ReplicaSetsByCreationTimestamp`).
pub fn by_creation(a: &ReplicaSet, b: &ReplicaSet) -> Ordering {
    created(a)
        .cmp(&created(b))
        .then_with(|| name(a).cmp(name(b)))
}

/// Largest first; ties newest first (`ReplicaSetsBySizeNewer`).
pub fn by_size_newer(a: &ReplicaSet, b: &ReplicaSet) -> Ordering {
    spec_replicas(b)
        .cmp(&spec_replicas(a))
        .then_with(|| by_creation(b, a))
}

/// Largest first; ties oldest first (`ReplicaSetsBySizeOlder`).
pub fn by_size_older(a: &ReplicaSet, b: &ReplicaSet) -> Ordering {
    spec_replicas(b)
        .cmp(&spec_replicas(a))
        .then_with(|| by_creation(a, b))
}

/// Lowest revision first; ties oldest first (`ReplicaSetsByRevision`).
pub fn by_revision(a: &ReplicaSet, b: &ReplicaSet) -> Ordering {
    let rev = |rs: &ReplicaSet| revision::revision(&rs.metadata).unwrap_or(0);
    rev(a).cmp(&rev(b)).then_with(|| by_creation(a, b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn deployment(replicas: i32, surge: Value, unavailable: Value) -> Deployment {
        serde_json::from_value(json!({
            "metadata": {"name": "d"},
            "spec": {"replicas": replicas, "selector": {},
                     "strategy": {"type": "RollingUpdate",
                                  "rollingUpdate": {"maxSurge": surge, "maxUnavailable": unavailable}},
                     "template": {}}
        }))
        .expect("deployment")
    }

    fn rs(name: &str, replicas: i32, max_replicas: Option<i32>, created: &str) -> ReplicaSet {
        let mut annotations = serde_json::Map::new();
        if let Some(max) = max_replicas {
            annotations.insert(
                "deployment.kubernetes.io/max-replicas".into(),
                json!(max.to_string()),
            );
        }
        serde_json::from_value(json!({
            "metadata": {"name": name, "annotations": annotations, "creationTimestamp": created},
            "spec": {"replicas": replicas, "selector": {}},
        }))
        .expect("rs")
    }

    #[test]
    fn percentages_round_surge_up_and_unavailable_down() {
        let p = |s: &str| IntOrString::String(s.into());
        assert_eq!(scaled_value(&p("25%"), 10, true), Ok(3));
        assert_eq!(scaled_value(&p("25%"), 10, false), Ok(2));
        assert_eq!(scaled_value(&p("0%"), 10, true), Ok(0));
        assert_eq!(scaled_value(&IntOrString::Int(4), 10, false), Ok(4));
        assert!(scaled_value(&p("25"), 10, true).is_err());
        assert_eq!(
            resolve_fenceposts(Some(&p("25%")), Some(&p("25%")), 1),
            Ok((1, 0))
        );
        // Both resolve to zero: one pod may be unavailable.
        assert_eq!(
            resolve_fenceposts(Some(&p("10%")), Some(&p("10%")), 0),
            Ok((0, 1))
        );
        assert_eq!(
            resolve_fenceposts(Some(&IntOrString::Int(0)), Some(&p("10%")), 3),
            Ok((0, 1))
        );
    }

    #[test]
    fn unavailability_is_capped_and_recreate_has_no_budgets() {
        let d = deployment(2, json!(0), json!(5));
        assert_eq!(max_unavailable(&d), 2);
        let mut recreate = d.clone();
        if let Some(s) = recreate.spec.as_mut() {
            s.strategy = serde_json::from_value(json!({"type": "Recreate"})).ok();
        }
        assert_eq!(max_unavailable(&recreate), 0);
        assert_eq!(max_surge(&recreate), 0);
    }

    #[test]
    fn new_replica_set_grows_within_the_surge() {
        let d = deployment(10, json!("25%"), json!("25%"));
        let old = rs("old", 10, None, "2026-01-01T00:00:00Z");
        let new = rs("new", 0, None, "2026-01-01T00:01:00Z");
        // 10 + ceil(2.5) = 13 pods at most: the new set may have 3.
        assert_eq!(new_rs_new_replicas(&d, &[&old, &new], &new), 3);
        let new = rs("new", 3, None, "2026-01-01T00:01:00Z");
        assert_eq!(new_rs_new_replicas(&d, &[&old, &new], &new), 3);
        let old = rs("old", 5, None, "2026-01-01T00:00:00Z");
        assert_eq!(new_rs_new_replicas(&d, &[&old, &new], &new), 8);
        let old = rs("old", 0, None, "2026-01-01T00:00:00Z");
        assert_eq!(new_rs_new_replicas(&d, &[&old, &new], &new), 10);
    }

    #[test]
    fn scaling_mid_rollout_is_proportional() {
        // Upstream's documented example: 10 replicas, surge 3, sets of 8 and 5 (13), scaled
        // to 15 (+5 surge 3 -> 18 allowed, 5 to add): 8 -> 11, 5 -> 7.
        let d = deployment(15, json!(3), json!(2));
        let big = rs("big", 8, Some(13), "2026-01-01T00:00:00Z");
        let small = rs("small", 5, Some(13), "2026-01-01T00:01:00Z");
        let mut sets = vec![&big, &small];
        sets.sort_by(|a, b| by_size_newer(a, b));
        let allowed = desired(&d) + max_surge(&d);
        let to_add = allowed - total_spec(&sets);
        assert_eq!(to_add, 5);
        assert_eq!(proportional_sizes(&d, &sets, to_add), vec![11, 7]);
        // Scaled to zero: everything goes.
        let zero = deployment(0, json!(3), json!(2));
        assert_eq!(proportional_sizes(&zero, &sets, -13), vec![0, 0]);
    }

    #[test]
    fn orderings() {
        let a = rs("a", 3, None, "2026-01-01T00:00:00Z");
        let b = rs("b", 3, None, "2026-01-01T00:01:00Z");
        let c = rs("c", 5, None, "2026-01-01T00:02:00Z");
        let mut sets = [&a, &b, &c];
        sets.sort_by(|x, y| by_size_newer(x, y));
        assert_eq!(
            sets.iter().map(|r| name(r)).collect::<Vec<_>>(),
            ["c", "b", "a"]
        );
        sets.sort_by(|x, y| by_size_older(x, y));
        assert_eq!(
            sets.iter().map(|r| name(r)).collect::<Vec<_>>(),
            ["c", "a", "b"]
        );
        sets.sort_by(|x, y| by_creation(x, y));
        assert_eq!(
            sets.iter().map(|r| name(r)).collect::<Vec<_>>(),
            ["a", "b", "c"]
        );
    }
}
