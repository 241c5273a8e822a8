"""Offline checks of deploy/ for tests/tests/deploy_manifests.rs.

Runs with the venv `cargo xtask setup` makes (target/deploy-tools/venv:
kubernetes-validate, which bundles the Kubernetes API's JSON schemas, and
PyYAML). Subcommands:

  core KUBE_VERSION FILE...  every document that is not a Prometheus Operator
                             custom resource, against the Kubernetes API schema
                             of its apiVersion/kind, strict (unknown fields are
                             errors, as `kubectl apply --validate=strict`).
  rules PROMETHEUSRULE OUT   writes the PrometheusRule's spec.groups as a
                             Prometheus rule file.
  config-overlay BASE OVERLAY
                             OVERLAY must be BASE plus a remote_write section.

Errors name the file, the resource and the field path, one line each, and
the exit status is 1; on success one line `checked N` (N documents).
"""
import sys

import kubernetes_validate
import yaml

OPERATOR_GROUP = "monitoring.coreos.com/"


def documents(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def resource_name(doc):
    meta = doc.get("metadata") or {}
    return "%s/%s" % (doc.get("kind", "?"), meta.get("name", "?"))


def core(version, files):
    errors, checked = [], 0
    for path in files:
        for doc in documents(path):
            if not isinstance(doc, dict) or "apiVersion" not in doc or "kind" not in doc:
                errors.append("%s: a document without apiVersion and kind" % path)
                continue
            if doc["apiVersion"].startswith(OPERATOR_GROUP):
                continue  # deploy_manifests.rs (crd_schema/): the operator's CRDs
            try:
                kubernetes_validate.validate(doc, version, strict=True)
                checked += 1
            except kubernetes_validate.ValidationError as e:
                field = ".".join(str(p) for p in e.path) or "(document)"
                errors.append("%s: %s: %s: %s" % (path, resource_name(doc), field, e.message))
            except kubernetes_validate.utils.SchemaNotFoundError as e:
                errors.append("%s: %s: %s" % (path, resource_name(doc), e.message))
    return errors, checked


def rules(prometheusrule, out):
    docs = [d for d in documents(prometheusrule) if d.get("kind") == "PrometheusRule"]
    if len(docs) != 1:
        return ["%s: expected one PrometheusRule, found %d" % (prometheusrule, len(docs))], 0
    groups = (docs[0].get("spec") or {}).get("groups")
    if not groups:
        return ["%s: PrometheusRule/%s: spec.groups: empty" % (prometheusrule, docs[0]["metadata"]["name"])], 0
    with open(out, "w") as f:
        yaml.safe_dump({"groups": groups}, f, sort_keys=False, allow_unicode=True, width=1 << 20)
    return [], len(groups)


def config_overlay(base, overlay):
    [b], [o] = documents(base), documents(overlay)
    errors = []
    if not o.get("remote_write"):
        errors.append("%s: remote_write: missing or empty" % overlay)
    rest = {k: v for k, v in o.items() if k != "remote_write"}
    for key in sorted(set(b) | set(rest)):
        if b.get(key) != rest.get(key):
            errors.append("%s: %s: differs from %s (%r != %r)" % (overlay, key, base, rest.get(key), b.get(key)))
    return errors, 1


def main(argv):
    if len(argv) >= 3 and argv[1] == "core":
        errors, n = core(argv[2], argv[3:])
    elif len(argv) == 4 and argv[1] == "rules":
        errors, n = rules(argv[2], argv[3])
    elif len(argv) == 4 and argv[1] == "config-overlay":
        errors, n = config_overlay(argv[2], argv[3])
    else:
        print(__doc__, file=sys.stderr)
        return 2
    for e in errors:
        print("ERROR " + e)
    if errors:
        return 1
    print("checked %d" % n)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
