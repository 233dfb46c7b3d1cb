//! Issues 6 and 7 (into FOSPS: the Dockerfile, `deploy/`, `engine manifests`, the OpenAPI
//! document, hot reload; the shipped connectors) tried again from outside as a hostile
//! tester: each test is a case their own tests did not have and that failed before its fix.
//! A running CronJob's pod selected by the engine's Service, PDB and HPA; CronJob names at the
//! length limit colliding or ending with a dash; admin routes served but missing from the
//! OpenAPI document (dead letters by id, the status page); operation ids given twice; a
//! document of no connectors that no OpenAPI validator accepts; the status page denied by the
//! mesh to the readers the README lets read it.

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use serde_json::Value;
use tokio::process::Command;

use crate::engine_router::open_engine;
use crate::engine_under_test::printed;
use crate::outside_tools::installed_tool;

/// Longest one run of the binary, or one request, may take before the test fails.
const RUN_LIMIT: Duration = Duration::from_secs(15);

/// Runs `engine ARGS` in `dir`, its output collected; fails past `RUN_LIMIT`.
async fn engine(dir: &Path, args: &[&str]) -> Output {
    crate::engine_under_test::engine_in(dir, args, RUN_LIMIT).await
}

/// The repository's root.
fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The documents of a YAML text, as JSON.
fn documents(yaml: &str) -> Vec<Value> {
    let parsed = engine::config::yaml::parse(yaml);
    assert!(parsed.errors.is_empty(), "{:?}\n{yaml}", parsed.errors);
    parsed.documents.iter().map(|d| d.to_json()).collect()
}

/// The one document of a committed `deploy/base` file.
fn deployed(name: &str) -> Value {
    let path = repo().join("deploy/base").join(name);
    let text = std::fs::read_to_string(&path).expect("a committed deploy/base file");
    documents(&text).remove(0)
}

/// Whether a `matchLabels`-style selector selects a pod of `labels`.
fn selects(selector: &Value, labels: &Value) -> bool {
    let selector = selector.as_object().expect("a selector");
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// A DNS-1123 label (what a CronJob's name must also be, at most 52 characters).
fn dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

#[test]
fn a_running_cron_job_s_pod_is_no_endpoint_of_the_engine_s_service() {
    // A CronJob's pod has no readiness probe, so it is Ready once its container runs: a pod
    // the Service selects then gets the Service's traffic on a port nothing listens on, and
    // the PDB and the HPA (the Deployment's selector) count it as one of the engine's.
    let service = deployed("service.yaml");
    let pdb = deployed("pdb.yaml");
    let deployment = deployed("deployment.yaml");
    let selectors = [
        ("Service", &service["spec"]["selector"]),
        (
            "PodDisruptionBudget",
            &pdb["spec"]["selector"]["matchLabels"],
        ),
        (
            "Deployment (and its HPA)",
            &deployment["spec"]["selector"]["matchLabels"],
        ),
    ];
    let text = std::fs::read_to_string(repo().join("deploy/base/cronjobs.yaml")).expect("read");
    let jobs = documents(&text);
    assert!(
        !jobs.is_empty(),
        "the shipped cron connectors have CronJobs"
    );
    for job in &jobs {
        let pod = &job["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"];
        assert_eq!(pod["eu.gravitate-health.fosps.connector"], "true", "{pod}");
        for (what, selector) in &selectors {
            assert!(
                !selects(selector, pod),
                "the {what} selects the pods of CronJob {}: {selector} against {pod}",
                job["metadata"]["name"]
            );
        }
    }
}

/// A cron connector `name` syncing Patients from a FHIR server into the NDJSON sink.
fn cron(name: &str) -> String {
    format!(
        r#"apiVersion: fosps.gravitate-health.eu/v1
kind: Connector
metadata: {{ name: {name} }}
spec:
  strategy: cron
  schedule: {{ cron: "0 2 * * *" }}
  source: {{ type: fhir, url: "http://127.0.0.1:9/fhir" }}
  sync: {{ resourceTypes: [Patient] }}
---
"#
    )
}

#[tokio::test]
async fn cron_jobs_of_names_at_the_length_limit_stay_apart_and_are_dns_names() {
    // Connector names are DNS labels of up to 63 characters; a CronJob's name is at most 52
    // (its Jobs add 11). Two names sharing their first 40 characters, and one whose cut
    // would end on a dash.
    let names = [
        format!("{}-{}", "a".repeat(40), "b".repeat(22)),
        format!("{}-{}", "a".repeat(40), "c".repeat(22)),
        format!("{}-{}", "d".repeat(28), "e".repeat(34)),
        "short".to_owned(),
    ];
    let dir = tempfile::tempdir().expect("tempdir");
    let yaml: String = names.iter().map(|n| cron(n)).collect();
    std::fs::write(dir.path().join("crons.yaml"), yaml).expect("write");
    let o = engine(dir.path(), &["manifests", "crons.yaml", "--out", "out"]).await;
    assert!(o.status.success(), "{}", printed(&o));
    let text = std::fs::read_to_string(dir.path().join("out/cronjobs.yaml")).expect("read");
    let jobs = documents(&text);
    assert_eq!(jobs.len(), names.len(), "{text}");
    let mut seen = std::collections::BTreeSet::new();
    for (job, connector) in jobs.iter().zip(&names) {
        let name = job["metadata"]["name"].as_str().expect("a name");
        assert!(
            name.len() <= 52 && dns_label(name),
            "CronJob of `{connector}`: `{name}` is not a DNS label of at most 52 characters"
        );
        assert!(seen.insert(name.to_owned()), "two CronJobs named `{name}`");
        let command =
            &job["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["command"];
        assert_eq!(command[2], connector.as_str(), "{command}");
    }
    assert!(
        seen.contains("fosps-connector-engine-short"),
        "a short name stays as it was: {seen:?}"
    );
}

/// A push connector `hook`, a cron connector `nightly` and a pull connector `labels` over a
/// source that refuses connections: every kind of route, no stand-in needed.
const EVERY_KIND: &str = r#"apiVersion: fosps.gravitate-health.eu/v1
kind: Connector
metadata: { name: hook }
spec:
  strategy: push
  push:
    auth: { bearer: { token: push-token-0123456789 } }
    mode: sync
  mapping:
    resourceType: Basic
    code: { text: x }
---
apiVersion: fosps.gravitate-health.eu/v1
kind: Connector
metadata: { name: nightly }
spec:
  strategy: cron
  schedule: { cron: "0 2 * * *" }
  source: { type: fhir, url: "http://127.0.0.1:9/fhir", retries: 0 }
  sync: { resourceTypes: [Patient] }
---
apiVersion: fosps.gravitate-health.eu/v1
kind: Connector
metadata: { name: labels }
spec:
  strategy: pull
  source: { type: fhir, url: "http://127.0.0.1:9/fhir", retries: 0, timeout: 2s }
  pull:
    batch: true
    resources:
      - type: Patient
        search: { params: { identifier: { type: token } } }
        read: {}
  cache: { ttl: 1m }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_lists_every_route_served_and_each_listed_route_answers() {
    let (served, _defs, _state) = open_engine(EVERY_KIND, RUN_LIMIT);
    let doc = served.get("/openapi.json").send().await.json();
    let paths = doc["paths"].as_object().expect("paths");
    // The admin API's routes as the README's tables give them (and the router serves).
    let documented = [
        ("get", "/connectors"),
        ("get", "/connectors/list"),
        ("get", "/connectors/{name}"),
        ("post", "/connectors/{name}/run"),
        ("delete", "/connectors/{name}/cache"),
        ("get", "/connectors/{name}/dead-letters"),
        ("get", "/connectors/{name}/dead-letters/{id}"),
        ("delete", "/connectors/{name}/dead-letters/{id}"),
        ("post", "/connectors/{name}/dead-letters/{id}/replay"),
        ("get", "/reload"),
        ("get", "/ui/"),
        ("post", "/ui/connectors/{name}/run"),
        ("post", "/ui/connectors/{name}/dead-letters/{id}/replay"),
        ("post", "/ui/connectors/{name}/dead-letters/{id}/delete"),
        ("post", "/push/hook"),
        ("post", "/fhir/labels"),
        ("get", "/fhir/labels/Patient"),
        ("get", "/fhir/labels/Patient/{id}"),
        // README: `/fhir/{connector}/{version}/...` is the same over the sources of one
        // version, for every connector.
        ("post", "/fhir/labels/R4"),
        ("get", "/fhir/labels/R4/Patient"),
        ("get", "/fhir/labels/R4/Patient/{id}"),
    ];
    let missing: Vec<String> = documented
        .iter()
        .filter(|(m, p)| paths.get(*p).and_then(|i| i.get(*m)).is_none())
        .map(|(m, p)| format!("{} {p}", m.to_uppercase()))
        .collect();
    assert!(
        missing.is_empty(),
        "served, not in the document: {missing:?}"
    );
    // Every operation listed reaches a handler of its own: never 405, never the fallback.
    for (path, item) in paths {
        let target = path
            .replace("{name}", "hook")
            .replace("{id}", "x1")
            .replace("{source}", "none");
        for method in item.as_object().expect("a path item").keys() {
            let call = match method.as_str() {
                "get" => served.get(&target),
                "post" => served.post(&target),
                "delete" => served.delete(&target),
                other => panic!("an unexpected method {other} on {path}"),
            };
            let got = call.send().await;
            assert!(
                got.status != 405 && !got.text.contains("no route for"),
                "{} {path} is listed, not served: {} {}",
                method.to_uppercase(),
                got.status,
                got.text
            );
        }
    }
}

/// Runs openapi-spec-validator on `doc`; fails the test, with its words, when it refuses it.
async fn assert_valid_openapi(doc: &str) {
    let validator = installed_tool(
        "OPENAPI_SPEC_VALIDATOR",
        "venv/bin/openapi-spec-validator",
        "openapi-spec-validator",
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("openapi.json");
    std::fs::write(&file, doc).expect("write");
    let child = Command::new(validator)
        .arg(&file)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("openapi-spec-validator starts");
    let o = tokio::time::timeout(RUN_LIMIT, child.wait_with_output())
        .await
        .expect("openapi-spec-validator ends in time")
        .expect("openapi-spec-validator runs");
    assert!(o.status.success(), "not valid OpenAPI: {}", printed(&o));
}

#[tokio::test]
async fn the_openapi_document_of_no_connectors_is_valid() {
    // Only a sink: the admin API is still served, for no connector name.
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("sinks.yaml"),
        "apiVersion: fosps.gravitate-health.eu/v1\nkind: Sink\nmetadata: { name: out }\nspec: { ndjson: { dir: out } }\n",
    )
    .expect("write");
    let o = engine(dir.path(), &["openapi", "sinks.yaml"]).await;
    assert!(o.status.success(), "{}", printed(&o));
    assert_valid_openapi(&String::from_utf8_lossy(&o.stdout)).await;
}

#[tokio::test]
async fn operation_ids_stay_unique_when_one_connector_s_name_extends_another_s() {
    // `a` has two sources (so a read from one source); `a-source` has one.
    let yaml = r#"apiVersion: fosps.gravitate-health.eu/v1
kind: Source
metadata: { name: one }
spec: { type: fhir, url: "http://127.0.0.1:9/one" }
---
apiVersion: fosps.gravitate-health.eu/v1
kind: Source
metadata: { name: two }
spec: { type: fhir, url: "http://127.0.0.1:9/two" }
---
apiVersion: fosps.gravitate-health.eu/v1
kind: Connector
metadata: { name: a }
spec:
  strategy: pull
  sources: [one, two]
  pull: { resources: [{ type: Patient, read: {} }] }
---
apiVersion: fosps.gravitate-health.eu/v1
kind: Connector
metadata: { name: a-source }
spec:
  strategy: pull
  sources: [one]
  pull: { resources: [{ type: Patient, read: {} }] }
"#;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("a.yaml"), yaml).expect("write");
    let o = engine(dir.path(), &["openapi", "a.yaml"]).await;
    assert!(o.status.success(), "{}", printed(&o));
    let doc: Value = serde_json::from_slice(&o.stdout).expect("JSON");
    let mut ids = std::collections::BTreeMap::<String, String>::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("a path item") {
            let id = op["operationId"]
                .as_str()
                .expect("an operationId")
                .to_owned();
            let here = format!("{method} {path}");
            if let Some(first) = ids.insert(id.clone(), here.clone()) {
                panic!("operationId `{id}` of both {first} and {here}");
            }
        }
    }
    assert_valid_openapi(&String::from_utf8_lossy(&o.stdout)).await;
}

/// Whether the `ALLOW` AuthorizationPolicy `policy` lets `method path` through, from a caller
/// with a JWT of the realm carrying `roles` (`None`: no JWT), as Istio reads it: some rule
/// whose every part matches; a path is exact, `prefix*` or `*suffix`.
fn allows(policy: &Value, method: &str, path: &str, roles: Option<&[&str]>) -> bool {
    let listed = |v: &Value, x: &str| {
        v.as_array().is_none_or(|a| {
            a.iter().filter_map(Value::as_str).any(|p| {
                p == x
                    || p.strip_suffix('*').is_some_and(|s| x.starts_with(s))
                    || p.strip_prefix('*').is_some_and(|s| x.ends_with(s))
            })
        })
    };
    policy["spec"]["rules"]
        .as_array()
        .expect("rules")
        .iter()
        .any(|rule| {
            let from = rule["from"].as_array().is_none_or(|f| {
                f.iter()
                    .any(|s| s["source"]["requestPrincipals"].is_null() || roles.is_some())
            });
            let to = rule["to"].as_array().is_none_or(|t| {
                t.iter().any(|o| {
                    listed(&o["operation"]["methods"], method)
                        && listed(&o["operation"]["paths"], path)
                })
            });
            let when = rule["when"].as_array().is_none_or(|w| {
                w.iter().all(|c| {
                    c["key"] == "request.auth.claims[realm_access][roles]"
                        && roles.is_some_and(|r| r.iter().any(|role| listed(&c["values"], role)))
                })
            });
            from && to && when
        })
}

#[test]
fn the_mesh_lets_readers_read_the_status_page_and_operators_press_its_buttons() {
    // README: the status page `/ui/` is part of the admin API, read with the reader role, its
    // buttons pressed with the operator role. Through the gateway and past the sidecar.
    let policy = deployed("authorizationpolicy.yaml");
    let reader: &[&str] = &["connector-reader"];
    let operator: &[&str] = &["connector-admin"];
    for path in ["/ui/", "/ui", "/ui/style.css", "/connectors"] {
        assert!(
            allows(&policy, "GET", path, Some(reader)),
            "reader GET {path}"
        );
        assert!(
            !allows(&policy, "GET", path, None),
            "GET {path} without a JWT"
        );
    }
    let buttons = [
        "/ui/connectors/hl7-fhir-sync/run",
        "/ui/connectors/label-webhook/dead-letters/1-2/replay",
        "/ui/connectors/label-webhook/dead-letters/1-2/delete",
    ];
    for path in buttons {
        assert!(
            allows(&policy, "POST", path, Some(operator)),
            "operator POST {path}"
        );
        assert!(
            !allows(&policy, "POST", path, Some(reader)),
            "reader POST {path}"
        );
    }
    // The same requests reach the engine through the gateway, their prefix rewritten.
    let vs = deployed("virtualservice.yaml");
    let routed = |public: &str| {
        vs["spec"]["http"]
            .as_array()
            .expect("routes")
            .iter()
            .find_map(|r| {
                let prefix = r["match"][0]["uri"]["prefix"].as_str()?;
                let rest = public.strip_prefix(prefix)?;
                Some(format!("{}{rest}", r["rewrite"]["uri"].as_str()?))
            })
    };
    assert_eq!(routed("/connector/api/ui/").as_deref(), Some("/ui/"));
    assert_eq!(
        routed("/connector/api/ui/connectors/lenses/run").as_deref(),
        Some("/ui/connectors/lenses/run")
    );
}

/// A push connector whose bearer token is written in the definition (as an integrator may,
/// against advice); `extra` adds a key on the token's line.
fn inline_token_push(extra: &str) -> String {
    format!(
        r#"apiVersion: fosps.gravitate-health.eu/v1
kind: Connector
metadata: {{ name: hook }}
spec:
  strategy: push
  push:
    auth: {{ bearer: {{ token: {INLINE_TOKEN}{extra} }} }}
    mode: sync
  mapping:
    resourceType: Basic
    code: {{ text: x }}
"#
    )
}

const INLINE_TOKEN: &str = "inline-secret-0123456789abcdef";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_reload_logs_and_shows_no_credential_and_no_local_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let defs = dir.path().join("defs");
    std::fs::create_dir(&defs).expect("mkdir");
    std::fs::write(defs.join("hook.yaml"), inline_token_push("")).expect("write");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_engine"));
    cmd.arg("serve")
        .arg(&defs)
        .arg("--admin-open")
        .arg("--state-dir")
        .arg(dir.path().join("state"));
    let server = crate::serve_process::ServeProcess::start(cmd, RUN_LIMIT).await;
    // An unknown key on the token's line: the refusal's diagnostic is on that line.
    std::fs::write(defs.join("hook.yaml"), inline_token_push(", extra: 1")).expect("write");
    let client = reqwest::Client::new();
    let refused = tokio::time::timeout(RUN_LIMIT, async {
        loop {
            let ready: Value = client
                .get(format!("{}/readyz", server.base))
                .send()
                .await
                .expect("readyz")
                .json()
                .await
                .expect("JSON");
            if ready["reload"]["lastReloadRefused"] == true {
                return ready;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the invalid set is refused");
    let status: Value = client
        .get(format!("{}/reload", server.base))
        .send()
        .await
        .expect("reload")
        .json()
        .await
        .expect("JSON");
    let shown = status["lastError"]
        .as_str()
        .expect("the refusal's diagnostics");
    assert!(shown.contains("unknown key `extra`"), "{shown}");
    assert!(shown.contains("defs/hook.yaml:7:"), "{shown}");
    let log = server.log();
    assert!(log.contains("unknown key `extra`"), "{log}");
    let local = dir.path().to_string_lossy().into_owned();
    for (what, text) in [
        ("GET /reload", shown),
        ("the log", log.as_str()),
        ("/readyz", &refused.to_string()),
    ] {
        assert!(
            !text.contains(INLINE_TOKEN),
            "{what} shows the token: {text}"
        );
        assert!(
            !text.contains(&local),
            "{what} names the local directory {local}: {text}"
        );
    }
    // The old set keeps serving the endpoint.
    let pushed = client
        .post(format!("{}/push/hook", server.base))
        .bearer_auth(INLINE_TOKEN)
        .json(&serde_json::json!({"a": 1}))
        .send()
        .await
        .expect("push");
    assert_eq!(pushed.status(), 200);
}

#[tokio::test]
async fn two_definition_files_of_one_name_are_refused_not_one_left_out_of_the_config_map() {
    // `engine serve` reads folders recursively; the ConfigMap is mounted as one flat folder,
    // keyed by file name: of `ips/sync.yaml` and `epi/sync.yaml` one would vanish.
    let dir = tempfile::tempdir().expect("tempdir");
    for (folder, name) in [("ips", "ips-sync"), ("epi", "epi-sync")] {
        std::fs::create_dir_all(dir.path().join("defs").join(folder)).expect("mkdir");
        std::fs::write(
            dir.path().join("defs").join(folder).join("sync.yaml"),
            cron(name),
        )
        .expect("write");
    }
    let o = engine(dir.path(), &["manifests", "defs", "--out", "out"]).await;
    let said = printed(&o);
    assert_eq!(o.status.code(), Some(1), "{said}");
    assert!(
        said.contains("defs/ips/sync.yaml") && said.contains("defs/epi/sync.yaml"),
        "both files are named: {said}"
    );
    assert!(
        !dir.path().join("out/configmap.yaml").exists(),
        "no ConfigMap is written without one of them"
    );
    // A file name no ConfigMap key can be.
    let odd = tempfile::tempdir().expect("tempdir");
    std::fs::write(odd.path().join("my sync.yaml"), cron("sync")).expect("write");
    let o = engine(odd.path(), &["manifests", "my sync.yaml", "--out", "out"]).await;
    assert_eq!(o.status.code(), Some(1), "{}", printed(&o));
    assert!(printed(&o).contains("ConfigMap key"), "{}", printed(&o));
}

#[tokio::test]
async fn a_cron_schedule_with_seconds_is_refused_by_the_manifests_not_left_to_never_run() {
    // The Deployment sets ENGINE_RUN_SCHEDULES=false (the CronJobs run the schedules), and a
    // Kubernetes CronJob has no seconds field: such a connector ran nowhere, without a word.
    let dir = tempfile::tempdir().expect("tempdir");
    let yaml = cron("every-thirty-seconds").replace(r#""0 2 * * *""#, r#""*/30 * * * * *""#);
    std::fs::write(dir.path().join("c.yaml"), yaml).expect("write");
    let o = engine(dir.path(), &["manifests", "c.yaml", "--out", "out"]).await;
    let said = printed(&o);
    assert_eq!(o.status.code(), Some(1), "{said}");
    assert!(
        said.contains("every-thirty-seconds") && said.contains("seconds"),
        "{said}"
    );
}
