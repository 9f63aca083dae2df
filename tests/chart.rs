//! The Helm chart (`charts/pgsidecar`) and the Grafana dashboard: `helm lint` and `helm
//! template` over the values files in `charts/pgsidecar/ci`, with the rendered objects parsed
//! and checked (native sidecar, regular container, standalone tier, an existing Secret,
//! monitoring), the named template a parent chart includes, and every metric the dashboard
//! queries exported by the sidecar; and the Dockerfile through hadolint. helm comes from
//! `PGSIDECAR_HELM`, `target/helm/helm` or `PATH`, hadolint from `target/pydeps` or `PATH`
//! (`.ci/run` installs both); without them these checks are skipped with a message, except in
//! CI (`CI` set), where that is a failure.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use yaml_rust2::{Yaml, YamlLoader};

const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/charts/pgsidecar");

fn helm() -> Option<PathBuf> {
    let candidates = [
        std::env::var_os("PGSIDECAR_HELM").map(PathBuf::from),
        Some(Path::new(env!("CARGO_MANIFEST_DIR")).join("target/helm/helm")),
        Some(PathBuf::from("helm")),
    ];
    let found = candidates.into_iter().flatten().find(|h| {
        Command::new(h)
            .arg("version")
            .output()
            .is_ok_and(|o| o.status.success())
    });
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "helm is missing in CI: .ci/run installs it into target/helm"
        );
        eprintln!("SKIPPED: helm is not installed (run .ci/run, or set PGSIDECAR_HELM)");
    }
    found
}

fn run(helm: &Path, args: &[&str]) -> String {
    let out = Command::new(helm).args(args).output().expect("run helm");
    assert!(
        out.status.success(),
        "helm {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("helm prints UTF-8")
}

/// The objects `helm template` renders with a values file (and `--set`s).
fn render(helm: &Path, chart: &str, values: Option<&str>, sets: &[&str]) -> Vec<Yaml> {
    let mut args = vec!["template", "demo", chart];
    if let Some(v) = values {
        args.extend(["-f", v]);
    }
    for s in sets {
        args.extend(["--set", s]);
    }
    let text = run(helm, &args);
    YamlLoader::load_from_str(&text)
        .expect("rendered YAML parses")
        .into_iter()
        .filter(|d| !d.is_null())
        .collect()
}

fn values(name: &str) -> String {
    format!("{CHART}/ci/{name}.yaml")
}

fn find<'a>(objects: &'a [Yaml], kind: &str) -> Vec<&'a Yaml> {
    objects
        .iter()
        .filter(|o| o["kind"].as_str() == Some(kind))
        .collect()
}

fn one<'a>(objects: &'a [Yaml], kind: &str) -> &'a Yaml {
    let found = find(objects, kind);
    assert_eq!(found.len(), 1, "one {kind} in {objects:?}");
    found[0]
}

fn named<'a>(list: &'a Yaml, name: &str) -> Option<&'a Yaml> {
    list.as_vec()?
        .iter()
        .find(|c| c["name"].as_str() == Some(name))
}

fn env<'a>(container: &'a Yaml, name: &str) -> Option<&'a str> {
    named(&container["env"], name)?["value"].as_str()
}

/// The restricted-profile settings every pgsidecar container and pod must carry.
fn assert_restricted(pod: &Yaml, container: &Yaml) {
    let psc = &pod["securityContext"];
    assert_eq!(psc["runAsNonRoot"].as_bool(), Some(true));
    assert_eq!(psc["runAsUser"].as_i64(), Some(65532));
    assert_eq!(
        psc["seccompProfile"]["type"].as_str(),
        Some("RuntimeDefault")
    );
    let sc = &container["securityContext"];
    assert_eq!(sc["readOnlyRootFilesystem"].as_bool(), Some(true));
    assert_eq!(sc["allowPrivilegeEscalation"].as_bool(), Some(false));
    assert_eq!(sc["capabilities"]["drop"][0].as_str(), Some("ALL"));
    assert_eq!(
        container["startupProbe"]["httpGet"]["path"].as_str(),
        Some("/readyz")
    );
    assert_eq!(
        container["readinessProbe"]["httpGet"]["path"].as_str(),
        Some("/readyz")
    );
    assert_eq!(
        container["livenessProbe"]["httpGet"]["path"].as_str(),
        Some("/healthz")
    );
    // shutdown_delay 5 s + drain_timeout 30 s + 5 s margin.
    assert_eq!(pod["terminationGracePeriodSeconds"].as_i64(), Some(40));
    assert_eq!(env(container, "PGSIDECAR_SHUTDOWN_DELAY"), Some("5s"));
    assert_eq!(env(container, "PGSIDECAR_DRAIN_TIMEOUT"), Some("30s"));
}

#[test]
fn the_chart_lints_and_renders_every_mode() {
    let Some(helm) = helm() else { return };
    for name in [
        "sidecar",
        "legacy",
        "standalone",
        "existing-secret",
        "monitoring",
    ] {
        run(&helm, &["lint", "--strict", CHART, "-f", &values(name)]);
    }

    // Native sidecar beside the example app.
    let objects = render(&helm, CHART, Some(&values("sidecar")), &[]);
    let secret = one(&objects, "Secret");
    assert!(secret["stringData"]["pgsidecar.toml"]
        .as_str()
        .is_some_and(|t| t.contains("[[database]]")));
    let app = one(&objects, "Deployment");
    let pod = &app["spec"]["template"]["spec"];
    let sidecar = named(&pod["initContainers"], "pgsidecar").expect("an init container");
    assert_eq!(sidecar["restartPolicy"].as_str(), Some("Always"));
    assert_eq!(env(sidecar, "PGSIDECAR_LISTEN"), Some("127.0.0.1:6432"));
    assert!(named(&pod["containers"], "pgsidecar").is_none());
    let container = named(&pod["containers"], "app").expect("the app");
    assert!(env(container, "DATABASE_URL").is_some_and(|u| u.contains("127.0.0.1:6432")));
    assert_restricted(pod, sidecar);
    let checksum = app["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
        .as_str()
        .expect("a config checksum")
        .to_owned();
    // Another configuration rolls the pods.
    let changed = render(
        &helm,
        CHART,
        Some(&values("sidecar")),
        &["config.toml=[pool]\nsize = 3\n"],
    );
    let other = one(&changed, "Deployment")["spec"]["template"]["metadata"]["annotations"]
        ["checksum/config"]
        .as_str()
        .unwrap();
    assert_ne!(checksum, other);

    // Older clusters: a regular container.
    let objects = render(&helm, CHART, Some(&values("legacy")), &[]);
    let pod = &one(&objects, "Deployment")["spec"]["template"]["spec"];
    assert!(pod["initContainers"].is_badvalue());
    let sidecar = named(&pod["containers"], "pgsidecar").expect("a container");
    assert!(sidecar["restartPolicy"].is_badvalue());
    assert_restricted(pod, sidecar);

    // Standalone: Deployment, Service, PodDisruptionBudget; listening on the pod's address.
    let objects = render(&helm, CHART, Some(&values("standalone")), &[]);
    let deployment = one(&objects, "Deployment");
    assert_eq!(deployment["spec"]["replicas"].as_i64(), Some(3));
    let pod = &deployment["spec"]["template"]["spec"];
    let proxy = named(&pod["containers"], "pgsidecar").expect("the proxy");
    assert_eq!(env(proxy, "PGSIDECAR_LISTEN"), Some("0.0.0.0:6432"));
    assert_restricted(pod, proxy);
    let service = one(&objects, "Service");
    let ports: Vec<i64> = service["spec"]["ports"]
        .as_vec()
        .unwrap()
        .iter()
        .filter_map(|p| p["port"].as_i64())
        .collect();
    assert_eq!(ports, vec![6432, 9930]);
    let pdb = one(&objects, "PodDisruptionBudget");
    assert_eq!(pdb["spec"]["minAvailable"].as_i64(), Some(1));
    assert_eq!(
        pdb["spec"]["selector"]["matchLabels"],
        deployment["spec"]["selector"]["matchLabels"]
    );
    assert!(find(&objects, "PodMonitor").is_empty());

    // An existing Secret: none rendered, that one mounted.
    let objects = render(&helm, CHART, Some(&values("existing-secret")), &[]);
    assert!(find(&objects, "Secret").is_empty());
    let pod = &one(&objects, "Deployment")["spec"]["template"]["spec"];
    let volume = named(&pod["volumes"], "pgsidecar-config").unwrap();
    assert_eq!(
        volume["secret"]["secretName"].as_str(),
        Some("my-pgsidecar-config")
    );
    assert_eq!(
        volume["secret"]["items"][0]["key"].as_str(),
        Some("sidecar.toml")
    );

    // Monitoring on: PodMonitor, ServiceMonitor, the dashboard as a ConfigMap.
    let objects = render(&helm, CHART, Some(&values("monitoring")), &[]);
    let monitor = one(&objects, "PodMonitor");
    assert_eq!(
        monitor["spec"]["podMetricsEndpoints"][0]["port"].as_str(),
        Some("metrics")
    );
    one(&objects, "ServiceMonitor");
    let dashboard = one(&objects, "ConfigMap")["data"]["pgsidecar.json"]
        .as_str()
        .expect("the dashboard");
    serde_json::from_str::<serde_json::Value>(dashboard).expect("the dashboard is JSON");
}

#[test]
fn a_parent_chart_injects_the_sidecar_with_the_named_template() {
    let Some(helm) = helm() else { return };
    let parent = tempfile::tempdir().unwrap();
    let root = parent.path();
    std::fs::create_dir_all(root.join("templates")).unwrap();
    std::fs::create_dir_all(root.join("charts")).unwrap();
    let copied = root.join("charts/pgsidecar");
    let status = Command::new("cp")
        .args(["-r", CHART, copied.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(status.success());
    std::fs::write(
        root.join("Chart.yaml"),
        "apiVersion: v2\nname: shop\nversion: 1.0.0\ndependencies:\n  - name: pgsidecar\n    version: 0.1.0\n",
    )
    .unwrap();
    // The parent renders only its own pod; the subchart's example app is off.
    std::fs::write(
        root.join("values.yaml"),
        "pgsidecar:\n  app:\n    enabled: false\n",
    )
    .unwrap();
    std::fs::write(
        root.join("templates/deployment.yaml"),
        r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: shop
spec:
  selector:
    matchLabels: {app: shop}
  template:
    metadata:
      labels: {app: shop}
    spec:
      initContainers:
        {{- include "pgsidecar.sidecar" .Subcharts.pgsidecar | nindent 8 }}
      containers:
        - name: shop
          image: shop:1
      volumes:
        {{- include "pgsidecar.volumes" .Subcharts.pgsidecar | nindent 8 }}
"#,
    )
    .unwrap();
    let objects = render(&helm, root.to_str().unwrap(), None, &[]);
    let deployments = find(&objects, "Deployment");
    assert_eq!(deployments.len(), 1, "only the parent's Deployment");
    let pod = &deployments[0]["spec"]["template"]["spec"];
    let sidecar = named(&pod["initContainers"], "pgsidecar").expect("injected");
    assert_eq!(sidecar["restartPolicy"].as_str(), Some("Always"));
    let volume = named(&pod["volumes"], "pgsidecar-config").expect("its volume");
    let secret = one(&objects, "Secret");
    assert_eq!(
        volume["secret"]["secretName"].as_str(),
        secret["metadata"]["name"].as_str()
    );
}

/// The metric names a PromQL expression uses (`pgsidecar_…`), histogram suffixes removed.
fn metric_names(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("pgsidecar_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        out.push(base.to_owned());
        rest = &tail[end..];
    }
    out
}

#[tokio::test]
async fn every_metric_the_dashboard_queries_is_exported() {
    let text = std::fs::read_to_string(format!("{CHART}/dashboards/pgsidecar.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let mut queried = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            queried.extend(metric_names(target["expr"].as_str().unwrap_or_default()));
        }
    }
    queried.sort();
    queried.dedup();
    assert!(queried.len() >= 20, "{queried:?}");
    // A running sidecar's registry and its /metrics.
    let name = support::fresh_user("dashboard");
    let sidecar = support::start(&support::base_toml(&name, "size = 2")).await;
    let client = support::connect(sidecar.addr, &name, support::PASSWORD, &name)
        .await
        .unwrap();
    client.batch_execute("SELECT 1").await.unwrap();
    let _ = client.batch_execute("SELECT 1/0").await;
    let (_, exported) = support::http_get(sidecar.metrics_addr, "/metrics").await;
    let families = sidecar.app.metrics.family_names();
    for metric in &queried {
        assert!(
            families.iter().any(|f| f == metric),
            "the dashboard queries {metric}, which pgsidecar does not have"
        );
    }
    // The ones every running sidecar has a series of are in /metrics now.
    for always in [
        "pgsidecar_transactions_total",
        "pgsidecar_queries_total",
        "pgsidecar_client_connections",
        "pgsidecar_query_duration_seconds",
        "pgsidecar_server_errors_total",
        "pgsidecar_upstream_up",
    ] {
        assert!(queried.iter().any(|q| q == always), "{always}");
        assert!(
            exported.contains(&format!("# TYPE {always} ")),
            "{always} in {exported}"
        );
    }
}

#[test]
fn the_dockerfile_passes_hadolint() {
    let candidates = [
        Path::new(env!("CARGO_MANIFEST_DIR")).join("target/pydeps/bin/hadolint"),
        PathBuf::from("hadolint"),
    ];
    let Some(hadolint) = candidates.into_iter().find(|h| {
        Command::new(h)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    }) else {
        assert!(
            std::env::var_os("CI").is_none(),
            "hadolint is missing in CI: .ci/run installs it into target/pydeps"
        );
        eprintln!("SKIPPED: hadolint is not installed (run .ci/run)");
        return;
    };
    let out = Command::new(hadolint)
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/Dockerfile"))
        .output()
        .expect("run hadolint");
    assert!(
        out.status.success(),
        "hadolint: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
