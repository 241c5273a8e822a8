// Offline check of deploy/'s Prometheus Operator custom resources
// (ServiceMonitor, PrometheusRule) for tests/tests/deploy_manifests.rs:
// validated with @kubernetes-models/prometheus-operator, whose validators are
// generated from the operator's API types (the schema of its CRDs). Installed
// by `cargo xtask setup` with `npm ci` (package-lock.json beside this file:
// pinned versions and their sha512) into the directory given as
// $NGXPROBE_DEPLOY_NPM (target/deploy-tools/npm).
//
//   node check_crds.mjs FILE...
//
// Other kinds are skipped (check_manifests.py checks them). Errors: one line
// each, `ERROR file: Kind/name: field: message`, exit status 1; on success
// `checked N`.
import fs from "node:fs";
import path from "node:path";
import { pathToFileURL } from "node:url";

const root = process.env.NGXPROBE_DEPLOY_NPM;
if (!root) {
  console.error("NGXPROBE_DEPLOY_NPM is not set (target/deploy-tools/npm, made by cargo xtask setup)");
  process.exit(2);
}
const load = (p) => import(pathToFileURL(path.join(root, "node_modules", p)).href);
const yaml = (await load("js-yaml/dist/js-yaml.mjs")).default;
const v1 = await load("@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/index.js");
const kinds = { ServiceMonitor: v1.ServiceMonitor, PrometheusRule: v1.PrometheusRule };

let checked = 0;
const errors = [];
for (const file of process.argv.slice(2)) {
  for (const doc of yaml.loadAll(fs.readFileSync(file, "utf8"))) {
    if (!doc || !String(doc.apiVersion).startsWith("monitoring.coreos.com/")) continue;
    const name = `${doc.kind}/${doc.metadata?.name ?? "?"}`;
    const Kind = doc.apiVersion === "monitoring.coreos.com/v1" ? kinds[doc.kind] : undefined;
    if (!Kind) {
      errors.push(`${file}: ${name}: apiVersion/kind: ${doc.apiVersion} ${doc.kind} is not checked here`);
      continue;
    }
    try {
      new Kind(doc).validate();
      checked += 1;
    } catch (e) {
      // ajv's errors: instancePath (/spec/endpoints/0/interval) and message.
      for (const err of e.errors ?? [{ instancePath: "", message: String(e.message) }]) {
        const field = err.instancePath.replace(/^\//, "").replaceAll("/", ".") || "(document)";
        errors.push(`${file}: ${name}: ${field}: ${err.message}`);
      }
    }
  }
}
for (const e of errors) console.log(`ERROR ${e}`);
if (errors.length) process.exit(1);
console.log(`checked ${checked}`);
