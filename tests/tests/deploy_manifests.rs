//! deploy/ validated offline, as CI runs it (issue: "deploy/ validated in CI").
//!
//! * Every Kubernetes manifest, as a file and as kustomize renders deploy/
//!   alone and with its Components (overlays/secured, overlays/remote-write),
//!   against the Kubernetes API's schemas (kubernetes-validate, strict:
//!   unknown fields are errors), and the ServiceMonitor / PrometheusRule
//!   against the Prometheus Operator's CRDs (tests/deploy/crds, vendored;
//!   their openAPIV3Schema with unknown fields refused, as the API server
//!   with `kubectl apply --validate=strict`: crd_schema/). The render is
//!   `kubectl kustomize` from the kubectl wheel. Tools: target/deploy-tools,
//!   made by `cargo xtask setup` (tests/deploy/).
//! * A mutated copy of deploy/ is rejected, naming file, resource and field.
//! * The PrometheusRule's groups pass `promtool check rules` and
//!   `ngxprobe check rules`. (That its ngxprobe.kernel group equals the
//!   built-in ngxprobe-kernel rules is agent/src/rules/kernel_rules_tests.rs.)
//! * overlays/remote-write's config is config.kubernetes.yml plus its
//!   remote_write section, and `ngxprobe check config` accepts it.
//! * rbac.yaml grants exactly get/list/watch on pods to the DaemonSet's
//!   service account; the Dockerfile's file capabilities and USER match the
//!   DaemonSet's capabilities.add and runAsUser.
mod crd_schema;

use crd_schema::CrdSchemas;
use ngxprobe_e2e::util::{self, TempDir};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The Kubernetes version whose API schemas the manifests must satisfy.
const KUBE_VERSION: &str = "1.34";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn deploy_dir() -> PathBuf {
    repo().join("deploy")
}

struct Tools {
    python: PathBuf,
    kubectl: PathBuf,
    crds: CrdSchemas,
}

/// target/deploy-tools ($NGXPROBE_DEPLOY_TOOLS overrides), or skip (fail in CI).
fn tools() -> Option<Tools> {
    let dir = std::env::var_os("NGXPROBE_DEPLOY_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| match std::env::var_os("CARGO_TARGET_DIR") {
            Some(t) if !t.is_empty() => repo().join(t).join("deploy-tools"),
            _ => repo().join("target/deploy-tools"),
        });
    let t = Tools {
        python: dir.join("venv/bin/python"),
        kubectl: dir.join("venv/bin/kubectl"),
        crds: CrdSchemas::load(&crd_schema::vendored_crd_files()).unwrap_or_else(|e| panic!("{e}")),
    };
    if !t.python.is_file() || !t.kubectl.is_file() {
        util::skip_or_fail(&format!(
            "deploy validators not found in {} (run `cargo xtask setup`)",
            dir.display()
        ));
        return None;
    }
    Some(t)
}

/// (exit ok, stdout + stderr) of `cmd`.
fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The number after "checked " in a validator's last line.
fn checked(text: &str) -> usize {
    text.lines()
        .find_map(|l| l.strip_prefix("checked "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no `checked N` line in:\n{text}"))
}

impl Tools {
    /// Core kinds: (ok, output).
    fn core(&self, files: &[PathBuf]) -> (bool, String) {
        run(Command::new(&self.python)
            .arg(repo().join("tests/deploy/check_manifests.py"))
            .args(["core", KUBE_VERSION])
            .args(files))
    }
    /// ServiceMonitor / PrometheusRule: (ok, errors one a line).
    fn crds(&self, files: &[PathBuf]) -> (bool, String) {
        let c = self.crds.check(files);
        (c.errors.is_empty(), c.errors.join("\n"))
    }
    /// Both must pass; returns (core documents, custom resources) checked.
    fn validate(&self, files: &[PathBuf]) -> (usize, usize) {
        let (ok, core) = self.core(files);
        assert!(ok, "Kubernetes API schema check failed:\n{core}");
        let crds = self.crds.check(files);
        assert!(
            crds.errors.is_empty(),
            "Prometheus Operator CRD schema check failed:\n{}",
            crds.errors.join("\n")
        );
        (checked(&core), crds.resources)
    }
    /// `kubectl kustomize` of a kustomization in `work` with deploy/ (at
    /// `deploy`) as resource and `components`, written to `work/<name>.yaml`.
    fn render(&self, work: &Path, deploy: &Path, components: &[&str], name: &str) -> PathBuf {
        // kustomize wants relative paths to other kustomizations (computed
        // between real paths: a symlinked checkout would break `..`).
        let deploy = deploy.canonicalize().unwrap();
        let dir = work.join(format!("k-{name}"));
        std::fs::create_dir_all(&dir).unwrap();
        let rel = relative(&dir, &deploy);
        let comps: Vec<String> = components.iter().map(|c| format!("{rel}/overlays/{c}")).collect();
        std::fs::write(
            dir.join("kustomization.yaml"),
            format!("resources: [{rel}]\ncomponents: [{}]\n", comps.join(", ")),
        )
        .unwrap();
        let (ok, text) = run(Command::new(&self.kubectl).arg("kustomize").arg(&dir));
        assert!(ok, "kubectl kustomize ({name}) failed:\n{text}");
        let out = work.join(format!("{name}.yaml"));
        std::fs::write(&out, text).unwrap();
        out
    }
}

/// `to` relative to `from` (both absolute, no symlinks needed).
fn relative(from: &Path, to: &Path) -> String {
    let from: Vec<_> = from.components().collect();
    let to: Vec<_> = to.components().collect();
    let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
    let mut parts: Vec<String> = vec!["..".into(); from.len() - common];
    parts.extend(
        to[common..]
            .iter()
            .map(|c| c.as_os_str().to_string_lossy().into_owned()),
    );
    parts.join("/")
}

/// Every Kubernetes manifest in deploy/ itself (not kustomize's own files,
/// not the JSON-6902 patches).
fn manifest_files(deploy: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(deploy)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml") && !p.ends_with("kustomization.yaml"))
        .collect();
    files.sort();
    files
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        let dest = to.join(p.file_name().unwrap());
        if p.is_dir() {
            copy_tree(&p, &dest);
        } else {
            std::fs::copy(&p, &dest).unwrap();
        }
    }
}

#[test]
fn every_manifest_and_render_passes_the_api_schemas() {
    let Some(t) = tools() else { return };
    let work = TempDir::new("deploy-manifests").unwrap();
    let deploy = deploy_dir();

    // The files as they are (networkpolicy.yaml is not in kustomization.yaml's
    // resources, so only this checks it).
    let files = manifest_files(&deploy);
    let (core, crs) = t.validate(&files);
    // namespace, 3 in rbac, daemonset, service, networkpolicy; 2 custom resources.
    assert_eq!((core, crs), (7, 2), "documents checked in {files:?}");

    // kustomize renders: base, each Component, both together.
    for (name, components, secrets) in [
        ("base", &[][..], 0),
        ("secured", &["secured"][..], 1),
        ("remote-write", &["remote-write"][..], 0),
        ("secured-remote-write", &["secured", "remote-write"][..], 1),
    ] {
        let rendered = t.render(work.path(), &deploy, components, name);
        let (core, crs) = t.validate(std::slice::from_ref(&rendered));
        // namespace, 3 rbac, ConfigMap, Service, DaemonSet (+ web-config Secret).
        assert_eq!((core, crs), (7 + secrets, 2), "documents checked in the {name} render");
        let text = std::fs::read_to_string(&rendered).unwrap();
        if components.contains(&"remote-write") {
            assert!(
                text.contains("password_file: /etc/ngxprobe/remote-write/password")
                    && text.contains("secretName: ngxprobe-remote-write"),
                "the remote-write Component's config and Secret volume are in the render:\n{text}"
            );
        }
        if components.contains(&"secured") {
            assert!(
                text.contains("--web.config.file="),
                "the secured Component's flag is in the render"
            );
        }
    }
}

#[test]
fn a_wrong_manifest_is_rejected_naming_file_and_field() {
    let Some(t) = tools() else { return };
    let work = TempDir::new("deploy-mutants").unwrap();
    let copy = work.path().join("deploy");
    copy_tree(&deploy_dir(), &copy);

    // A misspelt field in the DaemonSet (strict: unknown fields are errors).
    let ds = copy.join("daemonset.yaml");
    let text = std::fs::read_to_string(&ds).unwrap();
    assert!(text.contains("          imagePullPolicy: IfNotPresent\n          args:"));
    std::fs::write(
        &ds,
        text.replace(
            "          imagePullPolicy: IfNotPresent\n          args:",
            "          imagePullPolicy: IfNotPresent\n          readOnlyRootFilesytem: true\n          args:",
        ),
    )
    .unwrap();
    let (ok, out) = t.core(std::slice::from_ref(&ds));
    assert!(!ok, "a DaemonSet with an unknown container field passed:\n{out}");
    assert!(
        out.contains(&format!(
            "{}: DaemonSet/ngxprobe: spec.template.spec.containers.0:",
            ds.display()
        )) && out.contains("readOnlyRootFilesytem"),
        "the error names file, resource, field path and the field:\n{out}"
    );
    // The same mistake is caught in the kustomize render.
    let rendered = t.render(work.path(), &copy, &[], "mutant");
    let (ok, out) = t.core(&[rendered]);
    assert!(
        !ok && out.contains("readOnlyRootFilesytem"),
        "the render with the mutant passed:\n{out}"
    );

    // A wrong type: a port number as a word.
    let svc = copy.join("service.yaml");
    let text = std::fs::read_to_string(&svc).unwrap();
    std::fs::write(&svc, text.replace("port: 9113", "port: nine-one-one-three")).unwrap();
    let (ok, out) = t.core(std::slice::from_ref(&svc));
    assert!(!ok, "a Service with port: nine-one-one-three passed:\n{out}");
    assert!(
        out.contains(&format!("{}: Service/ngxprobe: spec.ports.0.port:", svc.display())),
        "{out}"
    );

    // The operator's schema: a scrape interval Prometheus cannot parse, and a
    // rule's `for` that is not a duration string.
    let sm = copy.join("servicemonitor.yaml");
    let text = std::fs::read_to_string(&sm).unwrap();
    std::fs::write(&sm, text.replace("interval: 15s", "interval: 15 seconds")).unwrap();
    let (ok, out) = t.crds(std::slice::from_ref(&sm));
    assert!(!ok, "a ServiceMonitor with interval: 15 seconds passed:\n{out}");
    assert!(
        out.contains(&format!(
            "{}: ServiceMonitor/ngxprobe: spec.endpoints.0.interval:",
            sm.display()
        )),
        "{out}"
    );
    let pr = copy.join("prometheusrule.yaml");
    let text = std::fs::read_to_string(&pr).unwrap();
    std::fs::write(&pr, text.replacen("for: 1m", "for: [1m]", 1)).unwrap();
    let (ok, out) = t.crds(std::slice::from_ref(&pr));
    assert!(!ok, "a PrometheusRule with for: [1m] passed:\n{out}");
    assert!(
        out.contains(&format!(
            "{}: PrometheusRule/ngxprobe: spec.groups.0.rules.0.for:",
            pr.display()
        )),
        "{out}"
    );
}

#[test]
fn unknown_fields_in_the_operators_resources_are_rejected_naming_file_and_field() {
    let Some(t) = tools() else { return };
    // The vendored CRDs are the ones loaded (a renamed file cannot drop a kind).
    let api = "monitoring.coreos.com/v1".to_string();
    assert_eq!(
        t.crds.kinds(),
        vec![(api.clone(), "PrometheusRule".into()), (api, "ServiceMonitor".into())]
    );
    let work = TempDir::new("deploy-crd-mutants").unwrap();
    let copy = work.path().join("deploy");
    copy_tree(&deploy_dir(), &copy);
    let edit = |file: &Path, from: &str, to: &str| {
        let text = std::fs::read_to_string(file).unwrap();
        assert!(text.contains(from), "{from:?} not in {}", file.display());
        std::fs::write(file, text.replacen(from, to, 1)).unwrap();
    };
    let rejected = |file: &Path, resource: &str, fields: &[&str]| {
        let (ok, out) = t.crds(&[file.to_path_buf()]);
        assert!(!ok, "{} passed with {fields:?}", file.display());
        for field in fields {
            let want = format!("{}: {resource}: {field}: unknown field", file.display());
            assert!(out.lines().any(|l| l == want), "no {want:?} in:\n{out}");
        }
        assert_eq!(out.lines().count(), fields.len(), "{out}");
    };

    // PrometheusRule: a misspelt key in a rule, one beside `groups`, one in
    // metadata. The Kubernetes API schema check does not see custom resources.
    let pr = copy.join("prometheusrule.yaml");
    edit(&pr, "          annotations:\n", "          anotations:\n");
    edit(
        &pr,
        "spec:\n  groups:\n",
        "spec:\n  partial_response_strategy: warn\n  groups:\n",
    );
    edit(
        &pr,
        "  labels:\n    app.kubernetes.io/name",
        "  lables:\n    app.kubernetes.io/name",
    );
    rejected(
        &pr,
        "PrometheusRule/ngxprobe",
        &[
            "metadata.lables",
            "spec.partial_response_strategy",
            "spec.groups.0.rules.0.anotations",
        ],
    );
    // Caught in the kustomize render too (kustomize passes unknown fields on).
    let rendered = t.render(work.path(), &copy, &[], "mutant");
    let (ok, out) = t.crds(std::slice::from_ref(&rendered));
    assert!(
        !ok && out.contains("PrometheusRule/ngxprobe: spec.groups.0.rules.0.anotations: unknown field"),
        "the render with the mutant passed:\n{out}"
    );

    // ServiceMonitor: the Prometheus CR's name for the scrape interval.
    let sm = copy.join("servicemonitor.yaml");
    edit(&sm, "      interval: 15s\n", "      scrapeInterval: 15s\n");
    rejected(&sm, "ServiceMonitor/ngxprobe", &["spec.endpoints.0.scrapeInterval"]);

    // Two groups of one name: the CRD's list-type map (key: name) refuses them.
    let pr = copy.join("prometheusrule.yaml");
    std::fs::copy(deploy_dir().join("prometheusrule.yaml"), &pr).unwrap();
    edit(&pr, "    - name: ngxprobe.kernel\n", "    - name: ngxprobe.nginx\n");
    let (ok, out) = t.crds(std::slice::from_ref(&pr));
    assert!(
        !ok && out.contains(&format!(
            "{}: PrometheusRule/ngxprobe: spec.groups: duplicate entry name=\"ngxprobe.nginx\"",
            pr.display()
        )),
        "{out}"
    );
}

/// The documents of a YAML file, as JSON values.
fn documents(path: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let docs: Vec<serde_json::Value> =
        serde_saphyr::from_multiple(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    docs.into_iter().filter(|d| !d.is_null()).collect()
}

fn find<'a>(docs: &'a [serde_json::Value], kind: &str) -> Vec<&'a serde_json::Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

/// The DaemonSet's pods may read pods and nothing else: exactly get, list
/// and watch on core pods, bound to the service account the DaemonSet runs
/// as, in its namespace (kustomize sets it on both).
#[test]
fn rbac_grants_exactly_get_list_watch_on_pods_to_the_daemonsets_account() {
    let deploy = deploy_dir();
    let rbac = documents(&deploy.join("rbac.yaml"));
    let ds = documents(&deploy.join("daemonset.yaml"));
    let ds = find(&ds, "DaemonSet");
    assert_eq!(ds.len(), 1);
    let account = ds[0]["spec"]["template"]["spec"]["serviceAccountName"]
        .as_str()
        .expect("the DaemonSet names its service account");
    assert_eq!(find(&rbac, "ServiceAccount")[0]["metadata"]["name"], account);
    // Only cluster-wide read of pods: no Role, no other ClusterRole.
    let kinds: Vec<&str> = rbac.iter().filter_map(|d| d["kind"].as_str()).collect();
    assert_eq!(kinds, ["ServiceAccount", "ClusterRole", "ClusterRoleBinding"]);
    let role = find(&rbac, "ClusterRole")[0];
    assert_eq!(
        role["rules"],
        serde_json::json!([{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}]),
        "rbac.yaml's ClusterRole"
    );
    assert!(role.get("aggregationRule").is_none());
    let binding = find(&rbac, "ClusterRoleBinding")[0];
    assert_eq!(
        binding["roleRef"],
        serde_json::json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role["metadata"]["name"]})
    );
    assert_eq!(
        binding["subjects"],
        serde_json::json!([{"kind": "ServiceAccount", "name": account, "namespace": "ngxprobe"}])
    );
    let kustomization = documents(&deploy.join("kustomization.yaml"));
    assert_eq!(
        kustomization[0]["namespace"], "ngxprobe",
        "the binding's subject namespace"
    );
}

/// deploy/Dockerfile and the DaemonSet agree: the image's binary carries as
/// file capabilities (permitted only) exactly what the container adds (with
/// no_new_privs a capability missing on either side is not available), and
/// the image's USER is the pod's runAsUser, not root. (The image itself is
/// not built here: no container daemon nor base image registry in CI.)
#[test]
fn image_and_daemonset_agree_on_user_and_capabilities() {
    let deploy = deploy_dir();
    let dockerfile = std::fs::read_to_string(deploy.join("Dockerfile")).unwrap();
    let setcap = dockerfile
        .split("setcap ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .expect("Dockerfile: setcap CAPS=p");
    let (caps, flags) = setcap.split_once('=').expect("setcap CAPS=FLAGS");
    assert_eq!(
        flags, "p",
        "permitted only: exec never fails when the container grants fewer"
    );
    let mut image: Vec<String> = caps
        .split(',')
        .map(|c| c.trim_start_matches("cap_").to_ascii_uppercase())
        .collect();
    image.sort();
    let user = dockerfile
        .lines()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("Dockerfile: USER")
        .trim();

    let ds = documents(&deploy.join("daemonset.yaml"));
    let pod = &find(&ds, "DaemonSet")[0]["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    assert_eq!(c["name"], "ngxprobe");
    let sc = &c["securityContext"];
    let mut added: Vec<String> = sc["capabilities"]["add"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    added.sort();
    assert_eq!(image, added, "Dockerfile's setcap vs the DaemonSet's capabilities.add");
    assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    let uid = pod["securityContext"]["runAsUser"].as_u64().unwrap();
    let gid = pod["securityContext"]["runAsGroup"].as_u64().unwrap();
    assert_ne!(uid, 0);
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        user,
        format!("{uid}:{gid}"),
        "Dockerfile USER vs the pod's runAsUser:runAsGroup"
    );
}

#[test]
fn prometheusrule_groups_pass_promtool_and_ngxprobe_check_rules() {
    let Some(t) = tools() else { return };
    let Some(promtool) = util::require_tool("/usr/bin/promtool", "apt-get install prometheus (cargo xtask setup)")
    else {
        return;
    };
    let bin = ngxprobe_e2e::agent::binary_path();
    if !bin.is_file() {
        util::skip_or_fail(&format!("{} not found (cargo xtask build)", bin.display()));
        return;
    }
    let work = TempDir::new("deploy-rules").unwrap();
    let rules = work.path().join("prometheusrule-groups.yml");
    let (ok, out) = run(Command::new(&t.python)
        .arg(repo().join("tests/deploy/check_manifests.py"))
        .arg("rules")
        .arg(deploy_dir().join("prometheusrule.yaml"))
        .arg(&rules));
    assert!(ok, "{out}");
    assert_eq!(checked(&out), 4, "rule groups in deploy/prometheusrule.yaml");

    let (ok, out) = run(Command::new(&promtool).args(["check", "rules"]).arg(&rules));
    assert!(ok && out.contains("SUCCESS"), "promtool check rules:\n{out}");
    let (ok, out) = run(Command::new(&bin).args(["check", "rules"]).arg(&rules));
    assert!(ok, "ngxprobe check rules:\n{out}");
    // The PrometheusRule manifest itself is a rule file for ngxprobe too.
    let (ok, out) = run(Command::new(&bin)
        .args(["check", "rules"])
        .arg(deploy_dir().join("prometheusrule.yaml")));
    assert!(ok, "ngxprobe check rules deploy/prometheusrule.yaml:\n{out}");

    // Both oracles can fail: a broken expression is refused by each.
    let broken = work.path().join("broken.yml");
    let text = std::fs::read_to_string(&rules).unwrap();
    assert!(text.contains("expr: nginx_up == 0"));
    std::fs::write(&broken, text.replace("expr: nginx_up == 0", "expr: nginx_up == == 0")).unwrap();
    let (ok, out) = run(Command::new(&promtool).args(["check", "rules"]).arg(&broken));
    assert!(!ok, "promtool accepted a broken expression:\n{out}");
    let (ok, out) = run(Command::new(&bin).args(["check", "rules"]).arg(&broken));
    assert!(!ok, "ngxprobe accepted a broken expression:\n{out}");
}

#[test]
fn remote_write_component_config_is_the_kubernetes_config_plus_remote_write() {
    let Some(t) = tools() else { return };
    let base = deploy_dir().join("config.kubernetes.yml");
    let overlay = deploy_dir().join("overlays/remote-write/config.yml");
    let (ok, out) = run(Command::new(&t.python)
        .arg(repo().join("tests/deploy/check_manifests.py"))
        .arg("config-overlay")
        .arg(&base)
        .arg(&overlay));
    assert!(ok, "{out}");

    // The check can fail: a setting changed only in the overlay's copy.
    let work = TempDir::new("deploy-rw-config").unwrap();
    let drifted = work.path().join("config.yml");
    let text = std::fs::read_to_string(&overlay).unwrap();
    assert!(text.contains("level: info"));
    std::fs::write(&drifted, text.replace("level: info", "level: debug")).unwrap();
    let (ok, out) = run(Command::new(&t.python)
        .arg(repo().join("tests/deploy/check_manifests.py"))
        .arg("config-overlay")
        .arg(&base)
        .arg(&drifted));
    assert!(!ok && out.contains("log: differs"), "a drifted copy passed:\n{out}");

    let bin = ngxprobe_e2e::agent::binary_path();
    if !bin.is_file() {
        util::skip_or_fail(&format!("{} not found (cargo xtask build)", bin.display()));
        return;
    }
    // The configs' global.external_labels name the node from NODE_NAME (the
    // DaemonSet sets it from the downward API); unset, the config is refused.
    let (ok, out) = run(Command::new(&bin)
        .args(["check", "config", "--config"])
        .arg(&overlay)
        .env_remove("NODE_NAME"));
    assert!(
        !ok && out.contains("global.external_labels.node: environment variable NODE_NAME is not set"),
        "accepted without NODE_NAME:\n{out}"
    );
    let (ok, out) = run(Command::new(&bin)
        .args(["check", "config", "--config"])
        .arg(&overlay)
        .env("NODE_NAME", "node-1"));
    assert!(ok, "ngxprobe check config {}:\n{out}", overlay.display());
}
