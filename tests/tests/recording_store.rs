//! A recording written to S3-compatible object storage as it goes (moto's server, run by
//! the test): while it records, each file's new bytes are in the bucket as chunks that
//! join into the file's start byte for byte; once it stops, each file is there whole, the
//! chunks are gone, and so are the shard's local copies (only the manifest stays).

use anyhow::{Result, ensure};
use hyper::Method;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;
use tutti_sfu::shard::api::PipelineSpec;
use tutti_tests::eventually::eventually;
use tutti_tests::init_logs;
use tutti_tests::participant::{Participant, ParticipantConfig};
use tutti_tests::s3::MotoServer;
use tutti_tests::shard::{ADMIN_TOKEN, SIGNAL_TOKEN, TestShard};

const WAIT: Duration = Duration::from_secs(30);

async fn call(shard: &TestShard, method: Method, path: &str, body: Option<Value>) -> Result<Value> {
    let (status, text) = shard
        .admin
        .request(method, path, Some(ADMIN_TOKEN), body.map(|b| b.to_string()))
        .await?;
    ensure!(status.is_success(), "{path}: {status} {text}");
    Ok(serde_json::from_str(&text)?)
}

/// Whether `start` is the start of `file`, an IVF file's 32-byte header aside (only its
/// magic is compared).
fn same_start(file: &[u8], start: &[u8]) -> bool {
    let head = if start.starts_with(b"DKIF") { 32 } else { 0 };
    start.len() >= head
        && file.len() >= start.len()
        && file[..head.min(4)] == start[..head.min(4)]
        && file[head..start.len()] == start[head..]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recording_goes_to_object_storage_as_it_records_and_whole_when_it_stops() -> Result<()> {
    init_logs();
    let moto = MotoServer::start().await?;
    let config = moto.config("tutti-recordings", "lessons/", Duration::from_secs(1))?;
    let bucket = moto.bucket(&config).await?;
    let dir = std::env::temp_dir().join(format!("tutti-recording-store-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let shard = TestShard::start_recording_to_store(dir.clone(), config).await?;
    shard
        .admin
        .put_pipeline("lesson", &PipelineSpec::default())
        .await?;
    let cello = Participant::join(
        &shard.signal_url(),
        SIGNAL_TOKEN,
        ParticipantConfig::new("lesson", "cello"),
    )
    .await?;
    let spec = json!({ "room": "lesson", "from": shard.signal_url() });
    let started = call(&shard, Method::PUT, "/v1/recordings/r1", Some(spec)).await?;
    let path = started["path"].as_str().unwrap_or_default().to_owned();
    ensure!(!path.is_empty(), "{started}");
    let key = format!("lessons/{path}");

    // While it records: both files in the bucket as several chunks each.
    let seen: Mutex<BTreeMap<String, Vec<String>>> = Mutex::default();
    eventually(
        WAIT,
        "two files stored as three chunks each while recording",
        || {
            let (bucket, shard, key, seen) = (&bucket, &shard, &key, &seen);
            async move {
                let status = call(shard, Method::GET, "/v1/recordings/r1", None).await?;
                let mut chunks: BTreeMap<String, Vec<String>> = BTreeMap::new();
                for (object, _) in bucket.list(&format!("{key}/chunks/"), 10_000).await? {
                    let rest = object
                        .trim_start_matches(&format!("{key}/chunks/"))
                        .to_owned();
                    if let Some((file, _)) = rest.split_once('/') {
                        chunks.entry(file.to_owned()).or_default().push(object);
                    }
                }
                let done = status["phase"] == "Recording"
                    && status["stored"]["bytes"].as_u64().unwrap_or(0) > 0
                    && status["stored"]["complete"] == false
                    && chunks.len() == 2
                    && chunks.values().all(|c| c.len() >= 3);
                *seen.lock().map_err(|_| anyhow::anyhow!("poisoned"))? = chunks;
                Ok(done)
            }
        },
    )
    .await?;
    let chunks = seen.into_inner().map_err(|_| anyhow::anyhow!("poisoned"))?;
    // Chunks joined in the order of their keys are the start of the file (but for a video
    // file's header, rewritten as the file grows: its first chunk, stored again as it does).
    let mut joined = BTreeMap::new();
    for (file, keys) in &chunks {
        let mut bytes = Vec::new();
        for key in keys {
            bytes.extend_from_slice(&bucket.get(key, 64 << 20).await?);
        }
        let local = std::fs::read(dir.join(&path).join(file))?;
        ensure!(
            !bytes.is_empty() && same_start(&local, &bytes),
            "{file}: {} bytes of chunks are not the start of its {} bytes",
            bytes.len(),
            local.len()
        );
        joined.insert(file.clone(), bytes);
    }

    // Stopped: each file whole in the bucket, its chunks gone, the local copies too.
    call(&shard, Method::DELETE, "/v1/recordings/r1", None).await?;
    eventually(WAIT, "the recording stored whole", || async {
        let status = call(&shard, Method::GET, "/v1/recordings/r1", None).await?;
        Ok(status["phase"] == "Stopped")
    })
    .await?;
    let stopped = call(&shard, Method::GET, "/v1/recordings/r1", None).await?;
    ensure!(
        stopped["stored"]["complete"] == true
            && stopped["stored"]["location"] == format!("s3://tutti-recordings/{key}/"),
        "{stopped}"
    );
    let listed: BTreeMap<String, u64> = bucket
        .list(&format!("{key}/"), 10_000)
        .await?
        .into_iter()
        .collect();
    ensure!(
        !listed.keys().any(|k| k.contains("/chunks/")),
        "chunks left: {listed:?}"
    );
    ensure!(listed.contains_key(&format!("{key}/manifest.json")));
    let files = stopped["files"].as_array().cloned().unwrap_or_default();
    ensure!(files.len() == 2, "{stopped}");
    for file in &files {
        let name = file["file"].as_str().unwrap_or_default();
        let object = bucket.get(&format!("{key}/{name}"), 64 << 20).await?;
        let magic: &[u8] = if name.ends_with(".ogg") {
            b"OggS"
        } else {
            b"DKIF"
        };
        ensure!(
            object.len() as u64 == file["bytes"].as_u64().unwrap_or(0)
                && object.starts_with(magic)
                && joined
                    .get(name)
                    .is_some_and(|start| same_start(&object, start)),
            "{name}: {} bytes stored, {file}",
            object.len()
        );
        ensure!(!dir.join(&path).join(name).exists(), "{name} kept locally");
    }
    ensure!(dir.join(&path).join("manifest.json").exists());
    cello.leave().await;
    shard.shard.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// A container credentials endpoint (as EKS Pod Identity's agent is): answers each GET
/// with keys that expire `expires_in` from now, and counts the requests whose
/// `Authorization` is `token`.
async fn credentials_endpoint(
    token: &'static str,
    expires_in: Duration,
) -> Result<(String, std::sync::Arc<std::sync::atomic::AtomicUsize>)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/v1/credentials", listener.local_addr()?);
    let served = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = served.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let mut request = Vec::new();
            let mut buffer = [0u8; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 16_384 {
                match socket.read(&mut buffer).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buffer[..n]),
                }
            }
            let text = String::from_utf8_lossy(&request).to_lowercase();
            let (status, body) = if text.contains(&format!("authorization: {token}")) {
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let expiration = jiff::Timestamp::now()
                    .checked_add(expires_in)
                    .map(|t| t.to_string())
                    .unwrap_or_default();
                (
                    "200 OK",
                    format!(
                        r#"{{"AccessKeyId":"ASIATEST","SecretAccessKey":"secret","Token":"session","Expiration":"{expiration}"}}"#
                    ),
                )
            } else {
                ("403 Forbidden", "{}".to_owned())
            };
            let answer = format!(
                "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = socket.write_all(answer.as_bytes()).await;
        }
    });
    Ok((url, served))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn temporary_keys_come_from_the_pods_credentials_endpoint_and_are_renewed() -> Result<()> {
    use std::sync::atomic::Ordering;
    use tutti_sfu::recorder::credentials::CredentialSource;
    use tutti_sfu::recorder::store::ObjectStore;
    init_logs();
    let moto = MotoServer::start().await?;
    let mut config = moto.config("tutti-pod-identity", "", Duration::from_secs(10))?;
    config.keys = None;
    let token_file = std::env::temp_dir().join(format!("tutti-pod-token-{}", std::process::id()));
    std::fs::write(&token_file, "pod-token\n")?;

    // Keys good for an hour are fetched once for several requests.
    let (uri, served) = credentials_endpoint("pod-token", Duration::from_secs(3_600)).await?;
    let store = ObjectStore::new(
        config.clone(),
        CredentialSource::Container {
            uri: uri.clone(),
            token_file: Some(token_file.clone()),
            token: None,
        },
    )?;
    store.create_bucket().await?;
    store.put("a", bytes::Bytes::from_static(b"one")).await?;
    ensure!(store.get("a", 1024).await?.as_ref() == b"one");
    ensure!(
        served.load(Ordering::SeqCst) == 1,
        "fetched {served:?} times"
    );

    // Keys about to expire are fetched again before each use.
    let (uri, served) = credentials_endpoint("pod-token", Duration::from_secs(60)).await?;
    let expiring = ObjectStore::new(
        config.clone(),
        CredentialSource::Container {
            uri: uri.clone(),
            token_file: Some(token_file.clone()),
            token: None,
        },
    )?;
    expiring.put("b", bytes::Bytes::from_static(b"two")).await?;
    expiring
        .put("c", bytes::Bytes::from_static(b"three"))
        .await?;
    ensure!(
        served.load(Ordering::SeqCst) == 2,
        "fetched {served:?} times"
    );

    // A wrong token is refused by the endpoint, and nothing is written.
    std::fs::write(&token_file, "stolen")?;
    let refused = ObjectStore::new(
        config,
        CredentialSource::Container {
            uri: uri.clone(),
            token_file: Some(token_file.clone()),
            token: None,
        },
    )?;
    let error = refused
        .put("d", bytes::Bytes::from_static(b"four"))
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    ensure!(error.contains("403"), "{error}");
    ensure!(store.list("d", 10).await?.is_empty());
    let _ = std::fs::remove_file(&token_file);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_files_go_up_in_parts_and_many_keys_are_listed_and_deleted_in_batches() -> Result<()>
{
    init_logs();
    let moto = MotoServer::start().await?;
    let config = moto.config("tutti-large", "", Duration::from_secs(10))?;
    let bucket = moto.bucket(&config).await?;

    // 20 MiB: a multipart upload of three parts (8 + 8 + 4 MiB), read back whole.
    let file = std::env::temp_dir().join(format!("tutti-large-{}", std::process::id()));
    let data: Vec<u8> = (0..20u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    std::fs::write(&file, &data)?;
    let size = bucket.put_file("large.ivf", &file).await?;
    ensure!(size == data.len() as u64);
    ensure!(bucket.size("large.ivf").await? == Some(size), "HEAD agrees");
    let back = bucket.get("large.ivf", 32 << 20).await?;
    ensure!(
        back.as_ref() == data.as_slice(),
        "the object is the file byte for byte"
    );
    ensure!(bucket.size("missing").await?.is_none());
    let _ = std::fs::remove_file(&file);

    // 1,005 keys: listed over two pages, deleted in two batches.
    let keys: Vec<String> = (0..1_005).map(|i| format!("many/{i:06}")).collect();
    for key in &keys {
        bucket.put(key, bytes::Bytes::from_static(b"x")).await?;
    }
    let listed = bucket.list("many/", 10_000).await?;
    ensure!(listed.len() == keys.len(), "{} listed", listed.len());
    bucket.delete(&keys).await?;
    ensure!(bucket.list("many/", 10_000).await?.is_empty());
    Ok(())
}
