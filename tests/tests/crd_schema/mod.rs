//! Custom resources checked against their CustomResourceDefinition's
//! `openAPIV3Schema`, as the API server checks them on
//! `kubectl apply --validate=strict`: an object's fields not in its
//! `properties` are unknown-field errors unless the schema says
//! `x-kubernetes-preserve-unknown-fields` (or gives `additionalProperties`,
//! a map) — the fields that structural-schema pruning would drop silently.
//!
//! The CRDs are the Prometheus Operator's, vendored unchanged in
//! tests/deploy/crds (their release pinned below and checked against the
//! files). What the schema translation does not cover makes loading fail
//! rather than pass silently: CEL rules (`x-kubernetes-validations`),
//! embedded resources, `$ref`. `metadata` is checked as ObjectMeta's field
//! names and the types of name, namespace, labels and annotations (the API
//! server validates ObjectMeta itself, not through the CRD's schema).
use jsonschema::error::ValidationErrorKind;
use jsonschema::{Keyword, ValidationError, Validator};
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The prometheus-operator release the vendored CRDs come from (their
/// `operator.prometheus.io/version` annotation must say the same).
pub const PROMETHEUS_OPERATOR_VERSION: &str = "0.93.0";

/// tests/deploy/crds: one file per CRD.
pub fn vendored_crd_files() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/crds");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

/// Validators by (apiVersion, kind).
pub struct CrdSchemas {
    kinds: BTreeMap<(String, String), Validator>,
}

/// What [`CrdSchemas::check`] found in some files.
#[derive(Debug, Default)]
pub struct Checked {
    /// Custom resources validated.
    pub resources: usize,
    /// `file: Kind/name: field.path: message`, one per problem.
    pub errors: Vec<String>,
}

impl CrdSchemas {
    pub fn load(files: &[PathBuf]) -> Result<CrdSchemas, String> {
        let mut kinds = BTreeMap::new();
        for file in files {
            for doc in yaml_documents(file)? {
                if doc["kind"] != "CustomResourceDefinition" {
                    continue;
                }
                let at = |what: &str| format!("{}: {}: {what}", file.display(), doc["metadata"]["name"]);
                let version = &doc["metadata"]["annotations"]["operator.prometheus.io/version"];
                if version != PROMETHEUS_OPERATOR_VERSION {
                    return Err(at(&format!(
                        "operator.prometheus.io/version is {version}, expected {PROMETHEUS_OPERATOR_VERSION}"
                    )));
                }
                let group = doc["spec"]["group"].as_str().ok_or_else(|| at("no spec.group"))?;
                let kind = doc["spec"]["names"]["kind"]
                    .as_str()
                    .ok_or_else(|| at("no spec.names.kind"))?;
                for v in doc["spec"]["versions"].as_array().into_iter().flatten() {
                    let name = v["name"].as_str().ok_or_else(|| at("a version without name"))?;
                    let mut schema = v["schema"]["openAPIV3Schema"].clone();
                    if !schema.is_object() {
                        return Err(at(&format!("{name}: no openAPIV3Schema")));
                    }
                    let mut unsupported = Vec::new();
                    strict(&mut schema, "", &mut unsupported);
                    if !unsupported.is_empty() {
                        return Err(at(&format!("{name}: not checked here: {}", unsupported.join(", "))));
                    }
                    schema["properties"]["metadata"] = object_meta();
                    // JSON Schema 2020-12 with formats asserted: Draft 4 (OpenAPI
                    // 3.0's base) would also check `pattern`s as ECMA-262 regexes,
                    // and the operator's are Go's (`(?i)`); they compile here.
                    let validator = jsonschema::options()
                        .with_draft(jsonschema::Draft::Draft202012)
                        .should_validate_formats(true)
                        .with_keyword("x-kubernetes-list-type", list_type)
                        .build(&schema)
                        .map_err(|e| at(&format!("{name}: schema does not compile: {e}")))?;
                    kinds.insert((format!("{group}/{name}"), kind.to_string()), validator);
                }
            }
        }
        Ok(CrdSchemas { kinds })
    }

    /// (apiVersion, kind) pairs known.
    pub fn kinds(&self) -> Vec<(String, String)> {
        self.kinds.keys().cloned().collect()
    }

    /// Every document of `files` whose apiVersion is in a group of the loaded
    /// CRDs (others are skipped); an unknown version or kind of such a group
    /// is an error.
    pub fn check(&self, files: &[PathBuf]) -> Checked {
        let groups: BTreeSet<&str> = self.kinds.keys().filter_map(|(api, _)| api.split('/').next()).collect();
        let mut out = Checked::default();
        for file in files {
            let docs = match yaml_documents(file) {
                Ok(d) => d,
                Err(e) => {
                    out.errors.push(e);
                    continue;
                }
            };
            for doc in docs {
                let api = doc["apiVersion"].as_str().unwrap_or("");
                if !groups.contains(api.split('/').next().unwrap_or("")) {
                    continue;
                }
                let kind = doc["kind"].as_str().unwrap_or("?");
                let name = format!("{kind}/{}", doc["metadata"]["name"].as_str().unwrap_or("?"));
                let Some(v) = self.kinds.get(&(api.to_string(), kind.to_string())) else {
                    out.errors.push(format!(
                        "{}: {name}: apiVersion/kind: {api} {kind} is not checked here",
                        file.display()
                    ));
                    continue;
                };
                out.resources += 1;
                for e in v.iter_errors(&doc) {
                    let path = dotted(e.instance_path().as_str());
                    match e.kind() {
                        ValidationErrorKind::AdditionalProperties { unexpected } => {
                            for field in unexpected {
                                let field = match path.as_str() {
                                    "" => field.clone(),
                                    p => format!("{p}.{field}"),
                                };
                                out.errors
                                    .push(format!("{}: {name}: {field}: unknown field", file.display()));
                            }
                        }
                        _ => {
                            let path = if path.is_empty() { "(document)".into() } else { path };
                            out.errors.push(format!("{}: {name}: {path}: {e}", file.display()));
                        }
                    }
                }
            }
        }
        out
    }
}

fn yaml_documents(file: &Path) -> Result<Vec<Value>, String> {
    let text = std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let docs: Vec<Value> = serde_saphyr::from_multiple(&text).map_err(|e| format!("{}: {e}", file.display()))?;
    Ok(docs.into_iter().filter(|d| !d.is_null()).collect())
}

/// `/spec/groups/0/rules` → `spec.groups.0.rules` (JSON-pointer escapes undone).
fn dotted(pointer: &str) -> String {
    pointer
        .split('/')
        .skip(1)
        .map(|s| s.replace("~1", "/").replace("~0", "~"))
        .collect::<Vec<_>>()
        .join(".")
}

/// Rewrites a structural schema so that plain JSON Schema applies the API
/// server's rules: objects without `properties`-escape hatches refuse
/// unknown fields, `nullable` admits null. Extensions it cannot express are
/// collected in `unsupported` (by schema path).
fn strict(node: &mut Value, at: &str, unsupported: &mut Vec<String>) {
    let Some(obj) = node.as_object_mut() else { return };
    for key in ["x-kubernetes-validations", "x-kubernetes-embedded-resource", "$ref"] {
        if obj.contains_key(key) {
            unsupported.push(format!("{key} at {}", if at.is_empty() { "/" } else { at }));
        }
    }
    // Draft 4's boolean form, which 2020-12 reads differently.
    for key in ["exclusiveMinimum", "exclusiveMaximum"] {
        if obj.get(key).is_some_and(Value::is_boolean) {
            unsupported.push(format!("boolean {key} at {at}"));
        }
    }
    if obj.remove("nullable") == Some(Value::Bool(true))
        && let Some(t) = obj.get("type").cloned()
    {
        obj.insert("type".into(), json!([t, "null"]));
    }
    let preserve = obj.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
    if obj.get("type").and_then(Value::as_str) == Some("object")
        && !preserve
        && !obj.contains_key("additionalProperties")
    {
        obj.insert("additionalProperties".into(), Value::Bool(false));
    }
    if let Some(props) = obj.get_mut("properties").and_then(Value::as_object_mut) {
        for (name, sub) in props.iter_mut() {
            strict(sub, &format!("{at}/properties/{name}"), unsupported);
        }
    }
    for key in ["items", "additionalProperties", "not"] {
        if let Some(sub) = obj.get_mut(key) {
            strict(sub, &format!("{at}/{key}"), unsupported);
        }
    }
    for key in ["anyOf", "allOf", "oneOf"] {
        for (i, sub) in obj
            .get_mut(key)
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
            .enumerate()
        {
            strict(sub, &format!("{at}/{key}/{i}"), unsupported);
        }
    }
}

/// ObjectMeta as a client may send it (k8s.io/apimachinery's field names).
fn object_meta() -> Value {
    let strings = json!({"type": "object", "additionalProperties": {"type": "string"}});
    json!({
        "type": "object",
        "additionalProperties": false,
        "properties": {
            "name": {"type": "string"},
            "generateName": {"type": "string"},
            "namespace": {"type": "string"},
            "labels": strings,
            "annotations": strings,
            "uid": {"type": "string"},
            "resourceVersion": {"type": "string"},
            "generation": {"type": "integer"},
            "creationTimestamp": {"type": ["string", "null"]},
            "deletionTimestamp": {"type": "string"},
            "deletionGracePeriodSeconds": {"type": "integer"},
            "finalizers": {"type": "array", "items": {"type": "string"}},
            "ownerReferences": {"type": "array", "items": {"type": "object"}},
            "managedFields": {"type": "array", "items": {"type": "object"}},
            "selfLink": {"type": "string"}
        }
    })
}

/// `x-kubernetes-list-type`: `set` items are unique, `map` items are
/// unique by their `x-kubernetes-list-map-keys` (as the API server refuses
/// duplicates); `atomic` says nothing about the items.
struct ListType {
    /// None: set (whole items); Some: map keys.
    keys: Option<Vec<String>>,
}

fn list_type<'a>(
    parent: &'a Map<String, Value>,
    value: &'a Value,
    _path: jsonschema::paths::Location,
) -> Result<Box<dyn for<'i> Keyword<'i>>, ValidationError<'a>> {
    let keys = match value.as_str() {
        Some("set") => None,
        Some("map") => Some(
            parent
                .get("x-kubernetes-list-map-keys")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|k| k.as_str().map(String::from))
                        .collect::<Vec<_>>()
                })
                .filter(|k| !k.is_empty())
                .ok_or_else(|| ValidationError::custom("list-type map without x-kubernetes-list-map-keys"))?,
        ),
        _ => Some(Vec::new()), // atomic: every list is fine (no keys: never a duplicate)
    };
    Ok(Box::new(ListType { keys }))
}

impl ListType {
    fn duplicate(&self, instance: &Value) -> Option<String> {
        let items = instance.as_array()?;
        if self.keys.as_ref().is_some_and(Vec::is_empty) {
            return None;
        }
        let mut seen = BTreeSet::new();
        for item in items {
            let key = match &self.keys {
                None => item.to_string(),
                Some(keys) => keys
                    .iter()
                    .map(|k| format!("{k}={}", item.get(k).unwrap_or(&Value::Null)))
                    .collect::<Vec<_>>()
                    .join(","),
            };
            if !seen.insert(key.clone()) {
                return Some(key);
            }
        }
        None
    }
}

impl<'i> Keyword<'i> for ListType {
    fn validate(&self, instance: &'i Value) -> Result<(), ValidationError<'i>> {
        match self.duplicate(instance) {
            None => Ok(()),
            Some(key) => Err(ValidationError::custom(format!("duplicate entry {key}"))),
        }
    }

    fn is_valid(&self, instance: &'i Value) -> bool {
        self.duplicate(instance).is_none()
    }
}
