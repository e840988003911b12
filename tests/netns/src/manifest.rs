//! Small manifests for the state dir.

/// A Namespace labelled `team: <name>`.
#[must_use]
pub fn namespace(name: &str) -> String {
    format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: {name}, labels: {{team: {name}}}}}\n---\n")
}

/// A Pod labelled `app: <app>`.
#[must_use]
pub fn pod(ns: &str, name: &str, app: &str) -> String {
    format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}, labels: {{app: {app}}}}}\nspec: {{containers: [{{name: c, image: i}}]}}\n---\n")
}
