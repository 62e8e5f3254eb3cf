//! Authorization: may this user do this to that? For now members of `system:masters` may do
//! everything and everyone else nothing; RBAC will plug in behind the same [`Authorizer`]
//! trait.
//!
//! Owns the decision only; the request attributes are computed by the caller.

use super::authn::UserInfo;

/// What a request wants to do, as Kubernetes' authorization attributes describe it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Attributes {
    Resource {
        verb: String,
        group: String,
        resource: String,
        subresource: Option<String>,
        namespace: Option<String>,
        name: Option<String>,
    },
    NonResource {
        verb: String,
        path: String,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// Denied, with the reason a Forbidden status should carry.
    Deny(String),
}

/// The seam every authorizer (the superuser rule now, RBAC later) implements.
pub trait Authorizer: Send + Sync + std::fmt::Debug {
    fn authorize(&self, user: &UserInfo, attributes: &Attributes) -> Decision;
}

/// `system:masters` may do everything; all others are denied.
#[derive(Debug, Default)]
pub struct SuperuserOnly;

impl Authorizer for SuperuserOnly {
    fn authorize(&self, user: &UserInfo, attributes: &Attributes) -> Decision {
        if user.groups.iter().any(|g| g == "system:masters") {
            return Decision::Allow;
        }
        Decision::Deny(forbidden_message(user, attributes))
    }
}

/// The message kube-apiserver gives a forbidden request.
pub fn forbidden_message(user: &UserInfo, attributes: &Attributes) -> String {
    match attributes {
        Attributes::Resource {
            verb,
            group,
            resource,
            subresource,
            namespace,
            name,
        } => {
            let what = match subresource {
                Some(sub) => format!("{resource}/{sub}"),
                None => resource.clone(),
            };
            let subject = match name {
                Some(name) => format!("{what} \"{name}\""),
                None => what.clone(),
            };
            let scope = match namespace {
                Some(ns) => format!(" in the namespace \"{ns}\""),
                None => " at the cluster scope".to_string(),
            };
            format!(
                "{subject} is forbidden: User \"{}\" cannot {verb} resource \"{what}\" in API group \"{group}\"{scope}",
                user.name
            )
        }
        Attributes::NonResource { verb, path } => format!(
            "forbidden: User \"{}\" cannot {verb} path \"{path}\"",
            user.name
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(groups: &[&str]) -> UserInfo {
        UserInfo {
            name: "alice".into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            uid: None,
        }
    }

    #[test]
    fn only_system_masters_may_act() {
        let attrs = Attributes::Resource {
            verb: "list".into(),
            group: "".into(),
            resource: "pods".into(),
            subresource: None,
            namespace: Some("default".into()),
            name: None,
        };
        assert_eq!(
            SuperuserOnly.authorize(&user(&["system:masters"]), &attrs),
            Decision::Allow
        );
        match SuperuserOnly.authorize(&user(&["system:authenticated"]), &attrs) {
            Decision::Deny(message) => assert_eq!(
                message,
                "pods is forbidden: User \"alice\" cannot list resource \"pods\" in API group \"\" in the namespace \"default\""
            ),
            Decision::Allow => panic!("allowed"),
        }
    }
}
