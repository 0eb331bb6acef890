//! Janus VideoRoom as a second SFU under the same load (`tutti-bench fanout --sfu janus`):
//! Debian's `janus` package started as a child process with a generated minimal
//! configuration (the VideoRoom plugin and the HTTP transport only), driven over its REST
//! API by the benchmark's own WebRTC peers.
//!
//! libnice, Janus's ICE agent, never gathers loopback candidates, so Janus and its peers
//! use the host's own address (found from the routing table; the traffic still never
//! leaves the host).

use anyhow::{Context, Result, bail};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::{Mutex, oneshot};

/// The Janus binary of Debian's package.
pub const JANUS: &str = "/usr/bin/janus";
/// Where the package keeps its plugins, transports, event handlers and loggers.
const LIB: &str = "/usr/lib/x86_64-linux-gnu/janus";
/// How long Janus may take to answer its first API call.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long one request may wait for its asynchronous event (an SDP answer or offer).
const EVENT_TIMEOUT: Duration = Duration::from_secs(20);

/// The host's own address: the source of the route to a public address. No packet is
/// sent; Janus and its peers bind to it because libnice ignores loopback.
pub fn host_ip() -> Result<IpAddr> {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0")?;
    socket
        .connect("192.0.2.1:9")
        .context("no route from this host: Janus needs a non-loopback address")?;
    let ip = socket.local_addr()?.ip();
    anyhow::ensure!(!ip.is_loopback(), "only a loopback address: {ip}");
    Ok(ip)
}

/// A running Janus, stopped when dropped.
pub struct JanusServer {
    child: tokio::process::Child,
    dir: PathBuf,
    api: JanusApi,
    /// The address its media uses.
    pub ip: IpAddr,
}

impl JanusServer {
    /// Writes a configuration into a fresh directory and starts Janus on it; returns once
    /// its API answers.
    pub async fn start() -> Result<Self> {
        anyhow::ensure!(
            Path::new(JANUS).exists(),
            "{JANUS} not found: install Debian's janus package (tests/run-all.sh does)"
        );
        let ip = host_ip()?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let dir = std::env::temp_dir().join(format!(
            "tutti-janus-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir)?;
        write_config(&dir, ip, port)?;
        let log = std::fs::File::create(dir.join("janus.log"))?;
        let child = tokio::process::Command::new(JANUS)
            .arg(format!("--configs-folder={}", dir.display()))
            .arg(format!("--config={}", dir.join("janus.jcfg").display()))
            .arg("--disable-colors")
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .context("starting janus")?;
        let api = JanusApi::new(SocketAddr::from(([127, 0, 0, 1], port)));
        let server = Self {
            child,
            dir,
            api,
            ip,
        };
        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        loop {
            if server.api.info().await.is_ok() {
                return Ok(server);
            }
            if tokio::time::Instant::now() >= deadline {
                bail!(
                    "janus did not answer within {START_TIMEOUT:?}; its log: {}",
                    server.log_tail()
                );
            }
            // Polling a child's port: nothing else tells when it listens.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Its process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Its API.
    pub fn api(&self) -> &JanusApi {
        &self.api
    }

    /// The end of its log, for error messages.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("janus.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Stops it and removes its configuration.
    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The minimal configuration: the VideoRoom plugin, the HTTP transport on `port` (on
/// loopback), media on `ip`, nothing else loaded.
fn write_config(dir: &Path, ip: IpAddr, port: u16) -> Result<()> {
    let folder = |name: &str| format!("{LIB}/{name}");
    let janus = format!(
        r#"general: {{
	configs_folder = "{configs}"
	plugins_folder = "{plugins}"
	transports_folder = "{transports}"
	events_folder = "{events}"
	loggers_folder = "{loggers}"
	debug_level = 3
}}
media: {{
	rtp_port_range = "30000-39999"
}}
nat: {{
	nice_debug = false
	ice_enforce_list = "{ip}"
}}
plugins: {{
	disable = "libjanus_audiobridge.so,libjanus_duktape.so,libjanus_echotest.so,libjanus_lua.so,libjanus_nosip.so,libjanus_recordplay.so,libjanus_sip.so,libjanus_streaming.so,libjanus_textroom.so,libjanus_videocall.so,libjanus_voicemail.so"
}}
transports: {{
	disable = "libjanus_websockets.so,libjanus_pfunix.so,libjanus_mqtt.so,libjanus_nanomsg.so,libjanus_rabbitmq.so"
}}
events: {{
	broadcast = false
}}
loggers: {{
	disable = "libjanus_jsonlog.so"
}}
"#,
        configs = dir.display(),
        plugins = folder("plugins"),
        transports = folder("transports"),
        events = folder("events"),
        loggers = folder("loggers"),
    );
    std::fs::write(dir.join("janus.jcfg"), janus)?;
    std::fs::write(
        dir.join("janus.transport.http.jcfg"),
        format!(
            "general: {{\n\tjson = \"compact\"\n\tbase_path = \"/janus\"\n\thttp = true\n\tport = {port}\n\tip = \"127.0.0.1\"\n\thttps = false\n}}\nadmin: {{\n\tadmin_http = false\n}}\n"
        ),
    )?;
    std::fs::write(dir.join("janus.plugin.videoroom.jcfg"), "general: {\n}\n")?;
    Ok(())
}

/// Janus's REST API.
#[derive(Clone)]
pub struct JanusApi {
    base: String,
    client: Client<HttpConnector, Full<Bytes>>,
}

fn transaction() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    format!("t{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

impl JanusApi {
    fn new(addr: SocketAddr) -> Self {
        Self {
            base: format!("http://{addr}/janus"),
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Result<Value> {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let request = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))?;
        let response = self.client.request(request).await?;
        let bytes = response.into_body().collect().await?.to_bytes();
        let value: Value = serde_json::from_slice(&bytes)
            .with_context(|| format!("janus said {}", String::from_utf8_lossy(&bytes)))?;
        if value["janus"] == "error" {
            bail!("janus error: {}", value["error"]);
        }
        Ok(value)
    }

    async fn info(&self) -> Result<Value> {
        self.call(Method::GET, "/info", None).await
    }

    /// A new session, whose events a task long-polls (which also keeps it alive).
    pub async fn session(&self) -> Result<JanusSession> {
        let created = self
            .call(
                Method::POST,
                "",
                Some(json!({"janus": "create", "transaction": transaction()})),
            )
            .await?;
        let id = created["data"]["id"].as_u64().context("session id")?;
        let waiting: Arc<Mutex<HashMap<String, oneshot::Sender<Value>>>> = Arc::default();
        let poll = {
            let api = self.clone();
            let waiting = waiting.clone();
            tokio::spawn(async move {
                loop {
                    let Ok(events) = api
                        .call(Method::GET, &format!("/{id}?maxev=10"), None)
                        .await
                    else {
                        return;
                    };
                    let events = match events {
                        Value::Array(events) => events,
                        one => vec![one],
                    };
                    for event in events {
                        if let Some(t) = event["transaction"].as_str()
                            && event["janus"] == "event"
                            && let Some(tx) = waiting.lock().await.remove(t)
                        {
                            let _ = tx.send(event);
                        }
                    }
                }
            })
        };
        Ok(JanusSession {
            api: self.clone(),
            id,
            waiting,
            poll,
        })
    }
}

/// One API session.
pub struct JanusSession {
    api: JanusApi,
    id: u64,
    waiting: Arc<Mutex<HashMap<String, oneshot::Sender<Value>>>>,
    poll: tokio::task::JoinHandle<()>,
}

impl JanusSession {
    /// A handle on the VideoRoom plugin.
    pub async fn attach(&self) -> Result<u64> {
        let attached = self
            .api
            .call(
                Method::POST,
                &format!("/{}", self.id),
                Some(json!({
                    "janus": "attach",
                    "plugin": "janus.plugin.videoroom",
                    "transaction": transaction(),
                })),
            )
            .await?;
        attached["data"]["id"].as_u64().context("handle id")
    }

    /// Sends a plugin request. A synchronous one returns Janus's reply; an asynchronous
    /// one (Janus acknowledges it) returns the event that answers it, with its JSEP.
    pub async fn message(&self, handle: u64, body: Value, jsep: Option<Value>) -> Result<Value> {
        let t = transaction();
        let (tx, rx) = oneshot::channel();
        self.waiting.lock().await.insert(t.clone(), tx);
        let mut request = json!({"janus": "message", "transaction": t, "body": body});
        if let Some(jsep) = jsep {
            request["jsep"] = jsep;
        }
        let reply = self
            .api
            .call(
                Method::POST,
                &format!("/{}/{handle}", self.id),
                Some(request),
            )
            .await?;
        if reply["janus"] != "ack" {
            self.waiting.lock().await.remove(&t);
            return Ok(reply);
        }
        let event = tokio::time::timeout(EVENT_TIMEOUT, rx)
            .await
            .context("no event from janus")??;
        let data = &event["plugindata"]["data"];
        if data["videoroom"] == "event" && data.get("error").is_some() {
            bail!("videoroom error: {}", data["error"]);
        }
        Ok(event)
    }

    /// Ends the session.
    pub async fn destroy(self) {
        self.poll.abort();
        let _ = self
            .api
            .call(
                Method::POST,
                &format!("/{}", self.id),
                Some(json!({"janus": "destroy", "transaction": transaction()})),
            )
            .await;
    }
}
