//! Standalone mode's state source: a directory of Kubernetes manifests (YAML or JSON,
//! several documents per file allowed), the same objects a cluster would serve.
//!
//! Today the agent reads and validates the directory at start and reports what it
//! holds; turning Pods, Namespaces and NetworkPolicies into identities and policy is
//! the NetworkPolicy work, which also adds watching for changes.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One Kubernetes object as read from disk.
#[allow(
    dead_code,
    reason = "the NetworkPolicy work consumes these; today only kinds are reported"
)]
#[derive(Debug, Clone)]
pub struct Object {
    pub file: PathBuf,
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub body: serde_json::Value,
}

/// What a directory held: the objects that parsed, and one message per rejected document.
#[derive(Debug, Default)]
pub struct Inventory {
    pub objects: Vec<Object>,
    pub errors: Vec<String>,
}

impl Inventory {
    /// Objects per kind, e.g. `{"Namespace": 2, "Pod": 4}`.
    #[must_use]
    pub fn kinds(&self) -> BTreeMap<String, u32> {
        let mut m = BTreeMap::new();
        for o in &self.objects {
            *m.entry(o.kind.clone()).or_insert(0) += 1;
        }
        m
    }
}

/// Reads every `*.yaml`, `*.yml` and `*.json` file directly in `dir` (sorted by name).
/// A bad document is reported with its file, position and field; the rest still load.
#[must_use]
pub fn read_dir(dir: &Path) -> Inventory {
    let mut inv = Inventory::default();
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(d) => d
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "yaml" || x == "yml" || x == "json"))
            .collect(),
        Err(e) => {
            inv.errors.push(format!("{}: {e}", dir.display()));
            return inv;
        }
    };
    files.sort();
    for file in files {
        match std::fs::read_to_string(&file) {
            Ok(text) => parse_into(&file, &text, &mut inv),
            Err(e) => inv.errors.push(format!("{}: {e}", file.display())),
        }
    }
    inv
}

/// Parses the documents of one file into `inv`.
pub fn parse_into(file: &Path, text: &str, inv: &mut Inventory) {
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let at = format!("{} (document {})", file.display(), i + 1);
        let value: serde_json::Value = match serde::Deserialize::deserialize(doc) {
            Ok(v) => v,
            Err(e) => {
                inv.errors.push(format!("{at}: invalid YAML: {e}"));
                // The YAML stream cannot be trusted past a syntax error.
                break;
            }
        };
        if value.is_null() {
            continue; // an empty document (e.g. a trailing `---`)
        }
        match object(file, &value) {
            Ok(o) => inv.objects.push(o),
            Err(field) => inv.errors.push(format!("{at}: {field}")),
        }
    }
}

fn object(file: &Path, v: &serde_json::Value) -> Result<Object, String> {
    let s = |ptr: &str| {
        v.pointer(ptr)
            .and_then(serde_json::Value::as_str)
            .filter(|s| !s.is_empty())
    };
    if !v.is_object() {
        return Err("a manifest must be a mapping with apiVersion, kind and metadata".into());
    }
    s("/apiVersion").ok_or("field apiVersion is missing or not a string")?;
    let kind = s("/kind").ok_or("field kind is missing or not a string")?;
    let name = s("/metadata/name").ok_or_else(|| format!("{kind}: field metadata.name is missing or not a string"))?;
    Ok(Object {
        file: file.to_path_buf(),
        kind: kind.to_string(),
        namespace: s("/metadata/namespace").unwrap_or_default().to_string(),
        name: name.to_string(),
        body: v.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Inventory {
        let mut inv = Inventory::default();
        parse_into(Path::new("x.yaml"), text, &mut inv);
        inv
    }

    #[test]
    fn multi_document_files() {
        let inv = parse(
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n---\n\
             apiVersion: v1\nkind: Pod\nmetadata: {name: web, namespace: shop, labels: {app: web}}\n---\n",
        );
        assert!(inv.errors.is_empty(), "{:?}", inv.errors);
        assert_eq!(
            inv.kinds(),
            BTreeMap::from([("Namespace".into(), 1), ("Pod".into(), 1)])
        );
        assert_eq!(inv.objects[1].namespace, "shop");
        assert_eq!(inv.objects[1].body["metadata"]["labels"]["app"], "web");
    }

    #[test]
    fn errors_name_file_document_and_field() {
        let inv = parse("apiVersion: v1\nkind: Pod\nmetadata: {}\n---\nkind: Pod\nmetadata: {name: a}\n---\n- 1\n");
        assert_eq!(inv.objects.len(), 0);
        assert!(
            inv.errors[0].contains("x.yaml (document 1)") && inv.errors[0].contains("metadata.name"),
            "{:?}",
            inv.errors
        );
        assert!(inv.errors[1].contains("document 2") && inv.errors[1].contains("apiVersion"));
        assert!(inv.errors[2].contains("document 3") && inv.errors[2].contains("mapping"));
        let bad = parse("apiVersion: v1\nkind: [unclosed\n");
        assert!(bad.errors[0].contains("invalid YAML"), "{:?}", bad.errors);
    }

    #[test]
    fn empty_directory_is_valid() {
        let dir = std::env::temp_dir().join(format!("moat-manifests-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let inv = read_dir(&dir);
        assert!(inv.objects.is_empty() && inv.errors.is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
