//! Waiting for a condition that only an API can be asked about (no notification exists),
//! by asking again every 50 ms until it holds or a deadline passes.

use anyhow::{Result, bail};
use std::future::Future;
use std::time::Duration;

/// Polls `check` until it returns `Ok(true)`, failing after `timeout`.
pub async fn eventually<F, Fut>(timeout: Duration, what: &str, mut check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<bool>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    loop {
        tick.tick().await;
        if check().await? {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
    }
}
